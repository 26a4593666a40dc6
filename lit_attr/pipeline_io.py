"""Export a trained DDPM as a diffusers pipeline folder and import one back, faithfully.

Export writes ``unet/`` (the attribution weights: EMA) and ``scheduler/`` (a ``DDPMScheduler``
with this model's betas, prediction type, variance type and ``clip_sample``, so diffusers samples
like lit-attr): a ``DDPMPipeline``, or for a latent DDPM an ``LDMPipeline`` whose ``vqvae/`` is the
``AutoencoderKL`` (diffusers' unconditional latent pipeline decodes ``latents / scaling_factor``).
Import uses the diffusers ``UNet2DModel`` object as saved (every config field kept, no rebuild),
and the VAE likewise, and reads the scheduler's settings (``lit_attr.scheduler_io``); it refuses a
folder whose weights do not all load, a model lit-attr cannot differentiate faithfully, or one
whose output after loading differs from the saved model's on a fixed input.
``load_ddpm_module`` accepts such a folder or a Lightning checkpoint, so every tool takes both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMPipeline, DDPMScheduler, LDMPipeline, UNet2DModel

from lit_attr.checkpoints import module_from_checkpoint, read_checkpoint
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.diffusion.unet import plain_config
from lit_attr.errors import ConfigError
from lit_attr.latent import autoencoder
from lit_attr.scheduler_io import diffusion_config_from_scheduler, scheduler_kwargs
from lit_attr.seeding import generator_for
from lit_attr.validation import check_finite_weights

CHECK_ROWS = 2
"""Rows of the fixed input on which an imported model's output is compared with the saved model's."""
CHECK_TOLERANCE = 1e-5
"""Largest accepted ``max |difference| / (1 + max |saved output|)`` of that comparison."""


VAE_FOLDERS = ("vqvae", "vae")
"""Sub-folders of a pipeline that may hold its autoencoder (``LDMPipeline`` writes ``vqvae/``)."""


def export_pipeline(module: DDPMModule, path: str | Path) -> Path:
    """Write ``path/{unet,scheduler}`` as a diffusers ``DDPMPipeline`` (latent model: ``LDMPipeline`` with ``vqvae/``);
    the scheduler has the module's settings."""
    scheduler = DDPMScheduler(**scheduler_kwargs(module.diffusion_config))
    if module.is_latent:
        pipeline = LDMPipeline(vqvae=module.vae, unet=module.attribution_unet, scheduler=scheduler)
    else:
        pipeline = DDPMPipeline(unet=module.attribution_unet, scheduler=scheduler)
    pipeline.save_pretrained(str(path))
    return Path(path)


def load_pipeline_vae(path: Path) -> AutoencoderKL | None:
    """The pipeline's ``AutoencoderKL`` (``vqvae/`` or ``vae/``), or None for a pixel-space pipeline."""
    for name in VAE_FOLDERS:
        folder = path / name
        if (folder / "config.json").is_file():
            kind = json.loads((folder / "config.json").read_text()).get("_class_name")
            if kind != "AutoencoderKL":
                raise ConfigError(f"{folder}: the autoencoder is a {kind}; lit-attr supports diffusers AutoencoderKL VAEs.")
            return autoencoder.load_vae(folder)
    return None


def load_diffusers_unet(folder: Path) -> UNet2DModel:
    """``UNet2DModel.from_pretrained`` in float32; refuses missing, unexpected or mismatched weights."""
    try:
        unet, info = UNet2DModel.from_pretrained(str(folder), output_loading_info=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{folder}: cannot load the U-Net with diffusers ({error}).") from error
    problems = {k: list(v)[:3] for k, v in info.items() if v}
    if problems:
        raise ConfigError(f"{folder}: the saved weights do not match the U-Net config ({problems}); refusing a "
                          "partially loaded model.")
    config = unet.config
    if config.out_channels != config.in_channels:
        raise ConfigError(f"{folder}: the U-Net has {config.in_channels} input but {config.out_channels} output channels "
                          "(a learned-variance model); lit-attr supports U-Nets that predict eps, v or x0 only.")
    if config.time_embedding_type not in ("positional", "learned"):
        raise ConfigError(f"{folder}: time_embedding_type={config.time_embedding_type!r} (a score-SDE model) is not a "
                          "DDPM; lit-attr needs integer-timestep U-Nets.")
    return unet.eval()


def unet_sample_shape(config: Any) -> tuple[int, int, int]:
    """(C, H, W) of the U-Net's input from its ``in_channels`` and ``sample_size`` (int or pair)."""
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return (config.in_channels, height, width)


def fixed_check_input(unet: UNet2DModel, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A seeded input ``(x_t, t, labels)`` for the output check: CHECK_ROWS rows at timesteps T/4 and 3T/4."""
    shape = unet_sample_shape(unet.config)
    generator = generator_for(0, 0, "import_check")
    x_t = torch.randn(CHECK_ROWS, *shape, generator=generator)
    t = torch.tensor([num_timesteps // 4, (3 * num_timesteps) // 4][:CHECK_ROWS])
    classes = unet.config.num_class_embeds
    labels = None if getattr(unet, "class_embedding", None) is None else torch.arange(CHECK_ROWS) % max(classes or 1, 1)
    return x_t, t, labels


@torch.no_grad()
def saved_output(unet: UNet2DModel, inputs: tuple) -> torch.Tensor:
    """The diffusers model's own output on the check input (``unet(x_t, t, class_labels=...)``)."""
    x_t, t, labels = inputs
    return unet(x_t, t, class_labels=labels).sample


@torch.no_grad()
def check_same_output(module: DDPMModule, inputs: tuple, reference: torch.Tensor, where: Path) -> None:
    """Refuse unless the network lit-attr differentiates gives the saved model's output on the check input."""
    x_t, t, labels = inputs
    unet = module.attribution_unet.eval()
    device = next(unet.parameters()).device
    output = unet_eps_model(unet)(x_t.to(device), t.to(device), None if labels is None else labels.to(device)).cpu()
    error = (output - reference).abs().max().item() / (1.0 + reference.abs().max().item())
    if not error <= CHECK_TOLERANCE:
        raise ConfigError(f"{where}: after loading, the model lit-attr would differentiate gives other outputs than the "
                          f"saved U-Net on a fixed input (relative max |difference| {error:.2e} > {CHECK_TOLERANCE:g}); "
                          "refusing to attribute a different model.")


def read_scheduler_config(folder: Path) -> dict[str, Any]:
    """The raw ``scheduler_config.json`` of a pipeline's scheduler folder."""
    path = folder / "scheduler_config.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no scheduler_config.json; a diffusers pipeline folder has scheduler/ next to unet/.")
    return json.loads(path.read_text())


def import_pipeline(path: str | Path) -> DDPMModule:
    """A ``DDPMModule`` (EMA disabled, eval mode) holding the U-Net of a pipeline folder, used as saved.

    Reads ``unet/`` and ``scheduler/``; the scheduler's betas, T, prediction type, variance type and
    clipping become the module's ``DiffusionSchedule``. Raises ``ConfigError`` on anything lit-attr
    would silently get wrong (see module docstring).
    """
    path = Path(path)
    unet = load_diffusers_unet(path / "unet")
    diffusion = diffusion_config_from_scheduler(read_scheduler_config(path / "scheduler"), path / "scheduler")
    vae = load_pipeline_vae(path)
    for network, name in ((unet, "the model"), (vae, "the VAE of the model")):
        if network is not None:  # before the output check, which NaN weights would fail with a vaguer message
            check_finite_weights(network, f"{name} {path}")
    inputs = fixed_check_input(unet, diffusion.num_timesteps)
    reference = saved_output(unet, inputs)
    channels, height, width = unet_sample_shape(unet.config)
    image_shape = (channels, height, width)
    if vae is not None:
        factor = autoencoder.downsample_factor(vae)
        image_shape = (vae.config.in_channels, height * factor, width * factor)
        decoded = autoencoder.decode(vae, inputs[0])
    module = DDPMModule(image_shape=image_shape, diffusion=diffusion, ema_decay=0.0,
                        diffusers_unet_config=plain_config(unet.config),
                        vae_config=None if vae is None else plain_config(vae.config))
    module.adopt_unet(unet)
    if vae is not None:
        module.adopt_vae(vae)
    module.eval()
    check_same_output(module, inputs, reference, path)
    if vae is not None and not torch.equal(module.to_pixels(inputs[0]), decoded):
        raise ConfigError(f"{path}: the VAE decodes differently after loading; refusing a different model.")
    return module


def load_ddpm_module(path: str | Path, map_location: str | torch.device = "cpu") -> DDPMModule:
    """Load a DDPM from a Lightning checkpoint (``.ckpt``) or a diffusers pipeline folder; refuses NaN/Inf weights."""
    path = Path(path)
    if path.is_dir() and (path / "unet").is_dir():
        return import_pipeline(path)  # checks its weights before comparing outputs
    if not path.is_file():
        raise ConfigError(
            f"No model at {path}: pass a Lightning checkpoint (e.g. runs/digits/checkpoints/last.ckpt) "
            "or a diffusers DDPMPipeline (or LDMPipeline) folder containing unet/ and scheduler/."
        )
    module = module_from_checkpoint(read_checkpoint(path, "--model.checkpoint"), path, map_location)
    check_finite_weights(module.attribution_unet, f"the model {path}")
    if module.is_latent:
        check_finite_weights(module.vae, f"the VAE of the model {path}")
    return module
