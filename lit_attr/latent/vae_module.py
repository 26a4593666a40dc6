"""``VAEModule``: train a small diffusers ``AutoencoderKL`` with ``train.py`` (its own config), for
latent diffusion on bundled data without downloading a VAE.

Loss per batch: ``||decode(z) - x||^2 / D + kl_weight * KL(q(z|x) || N(0, I)) / D`` with ``z``
drawn from the posterior (torch's global generator, seeded by ``seed_everything``) and D = C H W.
Before export (``callbacks.export.ExportPipelineCallback``) ``scaling_factor`` is set to
``1 / std`` of the posterior means over the training set, as for Stable Diffusion's VAE (0.18215),
so that scaled latents have unit variance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from diffusers import AutoencoderKL
from torch import Tensor

from lit_attr.ddpm_config import as_config
from lit_attr.errors import ConfigError
from lit_attr.latent.cache import encode_dataset
from lit_attr.visualize import save_grid


@dataclass
class VAEConfig:
    """Architecture of the autoencoder (diffusers ``AutoencoderKL`` arguments)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    """Channels per level; each level but the last halves the resolution."""
    latent_channels: int = 2
    """Channels of the latent."""
    layers_per_block: int = 1
    """ResNet blocks per level."""
    norm_num_groups: int = 8
    """GroupNorm groups (must divide every channel count)."""

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        if self.latent_channels < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"--model.vae.latent_channels must be >= 1 and --model.vae.norm_num_groups must divide "
                              f"every block_out_channels entry; got {self.latent_channels}, {self.norm_num_groups}, "
                              f"{self.block_out_channels}.")


class VAEModule(L.LightningModule):
    """An ``AutoencoderKL`` trained on the data module's images.

    Args:
        image_shape: (C, H, W) of the data; linked from ``data.image_shape`` by the CLI.
        vae: architecture.
        kl_weight: weight of the per-pixel KL term.
        lr: AdamW learning rate.
        num_figure_images: training images shown with their reconstructions in ``reconstructions.png``.
    """

    EXPORT_FOLDER = "vae"
    """``ExportPipelineCallback`` writes the VAE folder to ``<default_root_dir>/vae`` unless given a dirpath."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 8, 8),
        vae: VAEConfig | dict | None = None,
        kl_weight: float = 1e-3,
        lr: float = 2e-3,
        num_figure_images: int = 16,
    ) -> None:
        super().__init__()
        config = as_config(vae, VAEConfig)
        if kl_weight < 0 or lr <= 0:
            raise ConfigError(f"--model.kl_weight must be >= 0 and --model.lr > 0, got {kl_weight}, {lr}.")
        self.save_hyperparameters({"image_shape": list(image_shape), "vae": asdict(config), "kl_weight": kl_weight,
                                   "lr": lr, "num_figure_images": num_figure_images})
        channels, height, width = image_shape
        levels = len(config.block_out_channels)
        if height != width or height % 2 ** (levels - 1):
            raise ConfigError(f"The VAE needs square images whose side is a multiple of {2 ** (levels - 1)}; "
                              f"got {tuple(image_shape)}.")
        self.vae = AutoencoderKL(
            in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=config.block_out_channels,
            layers_per_block=config.layers_per_block, latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups, sample_size=height, scaling_factor=1.0,
        )
        self.kl_weight, self.lr, self.num_figure_images = kl_weight, lr, num_figure_images

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Reconstruction + weighted KL, both per pixel."""
        x = batch["image"]
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        pixels = x[0].numel()
        recon_loss = (reconstruction - x).pow(2).flatten(1).mean(1).mean()
        kl = posterior.kl().mean() / pixels
        loss = recon_loss + self.kl_weight * kl
        self.log_dict({"train/loss": loss, "train/reconstruction": recon_loss, "train/kl": kl}, prog_bar=True,
                      batch_size=x.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.vae.parameters(), lr=self.lr)

    @torch.no_grad()
    def calibrate_scaling(self, dataset: torch.utils.data.Dataset) -> float:
        """Set ``scaling_factor = 1 / std`` of the posterior means over ``dataset``; returns it."""
        was_training = self.vae.training
        self.vae.eval()
        self.vae.register_to_config(scaling_factor=1.0)
        std = encode_dataset(self.vae, dataset).std().item()
        self.vae.register_to_config(scaling_factor=1.0 / std)
        self.vae.train(was_training)
        return 1.0 / std

    def export(self, path: str | Path, dataset: torch.utils.data.Dataset) -> Path:
        """Calibrate the scaling on ``dataset`` and write the diffusers VAE folder (config.json + weights) and
        ``reconstructions.png`` (training images over their reconstructions) next to it."""
        self.calibrate_scaling(dataset)
        path = Path(path)
        self.vae.save_pretrained(str(path))
        images = torch.stack([dataset[p]["image"] for p in range(min(self.num_figure_images, len(dataset)))])
        with torch.no_grad():
            reconstruction = self.vae.eval()(images.to(self.device), sample_posterior=False).sample.clamp(-1, 1).cpu()
        save_grid(torch.cat([images, reconstruction]), path.parent / "reconstructions.png", nrow=len(images))
        return path
