"""``DDPMModule``: a LightningModule that trains a diffusers U-Net as a DDPM (Ho et al. 2020).

AdamW with linear warm-up then cosine decay, EMA weights (used for sampling and attribution),
train loss and loss per timestep bucket logged to TensorBoard. Gradient clipping is a Trainer
flag (``--trainer.gradient_clip_val 1.0``), as usual in Lightning.

Guards: non-finite or out-of-range hyperparameters are refused at construction; a NaN/Inf loss
stops training at that step, naming the first non-finite layer. Checkpoints carry the global
random states (``lit_attr.checkpoints``) and refuse to load into another architecture, so
``--ckpt_path`` resumes bit-identically to an uninterrupted run (single process).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from diffusers import AutoencoderKL, UNet2DModel
from torch import Tensor

from lit_attr.checkpoints import RNG_STATES_KEY, capture_rng_states, check_same_architecture, restore_rng_states
from lit_attr.ddpm_config import DiffusionConfig, OptimizerConfig, as_config, warmup_cosine
from lit_attr.diffusion.draws import draws_from_keys
from lit_attr.diffusion.loss import loss_per_draw, unet_eps_model
from lit_attr.diffusion.sampling import SamplingResult, sample
from lit_attr.diffusion.unet import UNetConfig, build_unet, plain_config
from lit_attr.errors import NumericalError
from lit_attr.latent import autoencoder
from lit_attr.latent.cache import LatentDataset, load_or_encode_latents
from lit_attr.validation import first_non_finite, integer, number


@contextlib.contextmanager
def _initialisation_rng(init_seed: int | None) -> Iterator[None]:
    """Draw the weights built inside from ``init_seed`` (CPU generator, forked: the global stream is restored
    afterwards), or from the global generator when it is None."""
    if init_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        yield


class DDPMModule(L.LightningModule):
    """A DDPM on a diffusers ``UNet2DModel``.

    Args:
        image_shape: (C, H, W) of the data; linked from ``data.image_shape`` by the CLI.
        unet: U-Net architecture.
        diffusion: forward-process schedule.
        optimizer: AdamW and LR schedule.
        ema_decay: EMA decay of the weights used for sampling and attribution (0 disables EMA).
        loss_buckets: number of timestep buckets for the logged per-bucket loss (0: not logged).
        diffusers_unet_config: the complete diffusers ``UNet2DModel`` config of an imported pipeline (set by
            ``lit_attr.pipeline_io.import_pipeline``); replaces ``unet`` so that every setting is kept.
        vae: a local diffusers ``AutoencoderKL`` folder: the DDPM is trained on its latents (frozen VAE;
            ``lit_attr.latent``). ``image_shape`` stays the data's; the U-Net gets the latent shape.
        vae_config: the VAE's config (set automatically, so that a checkpoint rebuilds the VAE without the folder).
        init_seed: seed of the U-Net's initial weights alone (None: drawn from the global generator, i.e. from
            ``seed_everything``). With it, runs with different ``seed_everything`` values start from the same
            weights and differ only in minibatch order, timesteps and noise; the global stream is left untouched.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        unet: UNetConfig | dict | None = None,
        diffusion: DiffusionConfig | dict | None = None,
        optimizer: OptimizerConfig | dict | None = None,
        ema_decay: float = 0.999,
        loss_buckets: int = 10,
        diffusers_unet_config: dict[str, Any] | None = None,
        vae: str | None = None,
        vae_config: dict[str, Any] | None = None,
        init_seed: int | None = None,
    ) -> None:
        super().__init__()
        unet, diffusion = as_config(unet, UNetConfig), as_config(diffusion, DiffusionConfig)
        optimizer = as_config(optimizer, OptimizerConfig)
        integer(loss_buckets, "--model.loss_buckets (0 disables the per-timestep loss)", low=0)
        ema_decay = number(ema_decay, "--model.ema_decay", 0.0, 1.0, high_open=True)
        if init_seed is not None:
            integer(init_seed, "--model.init_seed (omit it to initialise from --seed_everything)", low=0)
        self.vae: AutoencoderKL | None = None
        if vae_config is not None or vae is not None:
            self.vae = (autoencoder.freeze(AutoencoderKL.from_config(vae_config)) if vae_config
                        else autoencoder.load_vae(vae))
            vae_config = plain_config(self.vae.config)
        # Plain dicts, so that checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"image_shape": list(image_shape), "unet": asdict(unet), "diffusion": asdict(diffusion),
                                   "optimizer": asdict(optimizer), "ema_decay": ema_decay, "loss_buckets": loss_buckets,
                                   "diffusers_unet_config": diffusers_unet_config, "vae": vae, "vae_config": vae_config,
                                   "init_seed": init_seed})
        self.image_shape = tuple(image_shape)
        self.model_shape = self.image_shape if self.vae is None else autoencoder.latent_shape(self.vae, image_shape)
        self.optimizer_config = optimizer
        self.ema_decay = ema_decay
        self.loss_buckets = loss_buckets
        self.diffusion_config = diffusion
        with _initialisation_rng(init_seed):
            if diffusers_unet_config is not None:
                self.unet = UNet2DModel.from_config(diffusers_unet_config)
            else:
                self.unet = build_unet(unet, self.model_shape)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False).eval()
        self.schedule = diffusion.build()

    def adopt_unet(self, unet: UNet2DModel) -> None:
        """Use ``unet`` itself (e.g. as loaded by diffusers) as the trained weights; the EMA copy shares it when EMA is
        off."""
        self.unet = unet
        self.ema_unet = unet if self.ema_decay <= 0 else copy.deepcopy(unet).requires_grad_(False).eval()

    @property
    def is_latent(self) -> bool:
        """Whether the U-Net works on the latents of a VAE (``lit_attr.latent``) rather than on pixels."""
        return self.vae is not None

    def adopt_vae(self, vae: AutoencoderKL) -> None:
        """Use ``vae`` itself (e.g. as loaded by diffusers) as the frozen autoencoder."""
        self.vae = autoencoder.freeze(vae)

    def encode_pixels(self, images: Tensor) -> Tensor:
        """The model-space inputs of images (N, C, H, W) in [-1, 1]: scaled posterior-mean latents, or the images."""
        return autoencoder.encode_mean(self.vae, images) if self.is_latent else images

    def to_pixels(self, samples: Tensor) -> Tensor:
        """Images in [-1, 1] of model-space samples: decoded latents, or the samples themselves."""
        return autoencoder.decode(self.vae, samples) if self.is_latent else samples

    def setup(self, stage: str) -> None:
        """Latent model: encode the training set once (cached under ``default_root_dir``) and train on those latents;
        with random flips the latents change per draw, so each batch is encoded instead."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage != "fit" or not self.is_latent or not hasattr(datamodule, "use_dataset"):
            return
        if datamodule.config.random_flip or isinstance(datamodule.dataset, LatentDataset):
            return
        path = Path(self.trainer.default_root_dir) / "latents" / "train_latents.pt"
        datamodule.use_dataset(LatentDataset(datamodule.dataset,
                                             load_or_encode_latents(self.vae, datamodule.dataset, path)))

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a class-conditional U-Net (``num_class_embeds``), else None."""
        if getattr(self.unet, "class_embedding", None) is None:
            return None
        return self.unet.config.num_class_embeds

    @property
    def attribution_unet(self) -> UNet2DModel:
        """The weights to sample from and to attribute: the EMA copy (or the raw U-Net without EMA)."""
        return self.ema_unet if self.ema_decay > 0 else self.unet

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One DDPM step: uniform t, Gaussian noise, pixel-mean epsilon MSE (eq. 2, 3); keyed per example when the batch
        carries ``draw_key`` (``--data.example_keyed``)."""
        x0 = batch["image"] if "pixels" in batch else self.encode_pixels(batch["image"])
        if "draw_key" in batch:  # --data.example_keyed: each example's draw comes from its own key
            t, noise = draws_from_keys(batch["draw_key"], tuple(x0.shape[1:]), self.schedule.num_timesteps)
            t, noise = t.to(x0.device), noise.to(x0.device, x0.dtype)
        else:
            t = torch.randint(0, self.schedule.num_timesteps, (x0.shape[0],), device=x0.device)
            noise = torch.randn_like(x0)
        losses = loss_per_draw(unet_eps_model(self.unet), self.schedule, x0, t, noise, batch.get("label"))
        loss = losses.mean()
        if not bool(torch.isfinite(loss)):
            self._raise_non_finite_loss(loss, x0)
        self.log("train/loss", loss, prog_bar=True, batch_size=x0.shape[0])
        if self.loss_buckets > 0:
            self._log_bucket_losses(losses.detach(), t)
        return loss

    def _log_bucket_losses(self, losses: Tensor, t: Tensor) -> None:
        """Mean loss per timestep bucket, aggregated over each epoch (``train/loss_t{lo}-{hi}``)."""
        width = math.ceil(self.schedule.num_timesteps / self.loss_buckets)
        buckets = t // width
        for bucket in buckets.unique().tolist():
            mask = buckets == bucket
            name = f"train_loss_by_t/{bucket * width:04d}-{min((bucket + 1) * width, self.schedule.num_timesteps) - 1:04d}"
            self.log(name, losses[mask].mean(), on_step=False, on_epoch=True, batch_size=int(mask.sum()))

    def _raise_non_finite_loss(self, loss: Tensor, x0: Tensor) -> None:
        """Stop training at a NaN/Inf loss, naming the first non-finite layer (or the largest weight) and the cause."""
        weights = dict(self.unet.named_parameters())
        layer = first_non_finite(weights)
        lower_lr = "lower --model.optimizer.lr and keep --trainer.gradient_clip_val (e.g. 1.0)"
        if layer is not None:
            found = f"the weights of {layer} are not finite; the training diverged: {lower_lr}"
        elif not bool(torch.isfinite(x0).all()):
            found = "the input images hold NaN/Inf pixels; check the dataset files"
        else:
            largest = max(weights, key=lambda name: weights[name].detach().abs().max().item())
            found = (f"the model's output overflowed (largest weight {weights[largest].abs().max().item():.3g} in "
                     f"{largest}); {lower_lr}, or check --model.diffusion.*")
        raise NumericalError(f"training step {self.global_step}: the loss is {loss.item()}: {found}. No checkpoint "
                             "was written for this step.")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The optimizer step, then the EMA update, so that checkpoints saved after a step include both."""
        super().optimizer_step(*args, **kwargs)
        self._update_ema()

    def _update_ema(self) -> None:
        """EMA update with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` (n = steps done)."""
        if self.ema_decay <= 0:
            return
        steps = self.global_step + 1  # the step that just ran is not counted in global_step yet
        decay = min(self.ema_decay, (1 + steps) / (10 + steps))
        with torch.no_grad():
            params = [param.detach() for param in self.unet.parameters()]
            torch._foreach_lerp_(list(self.ema_unet.parameters()), params, 1.0 - decay)
            for ema, buf in zip(self.ema_unet.buffers(), self.unet.buffers()):
                ema.copy_(buf)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the global random states (timesteps, noise, dropout, epoch order) for an exact resume."""
        checkpoint[RNG_STATES_KEY] = capture_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse another architecture; when resuming a fit, restore the random states of the checkpoint."""
        path = getattr(self._trainer, "ckpt_path", None) or "(in-memory checkpoint)"
        check_same_architecture(checkpoint.get("hyper_parameters") or {}, dict(self.hparams), path)
        if self._trainer is not None and RNG_STATES_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_STATES_KEY])

    def configure_optimizers(self) -> dict:
        """AdamW + per-step LambdaLR (warm-up then cosine) over ``trainer.estimated_stepping_batches``."""
        cfg = self.optimizer_config
        opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total, cfg.warmup_fraction))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def generate(
        self, num_samples: int, seed: int = 0, num_steps: int | None = None, record_trajectory: bool = False,
        labels: Tensor | None = None,
    ) -> SamplingResult:
        """Sample from the attribution weights (EMA); see ``lit_attr.diffusion.sampling.sample``.

        ``images`` are in model space (latents of a latent model: ``to_pixels`` decodes them).
        A class-conditional model samples ``labels`` (num_samples,), by default the classes in turn.
        """
        if self.num_classes is not None and labels is None:
            labels = torch.arange(num_samples) % self.num_classes
        was_training = self.attribution_unet.training
        self.attribution_unet.eval()
        result = sample(unet_eps_model(self.attribution_unet), self.schedule, num_samples, self.model_shape,
                        seed=seed, num_steps=num_steps, record_trajectory=record_trajectory, device=self.device,
                        labels=labels, clamp=not self.is_latent)
        self.attribution_unet.train(was_training)
        return result
