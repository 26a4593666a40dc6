"""A frozen diffusers ``AutoencoderKL`` as the map between pixels and the latent space of a DDPM.

Encoding uses the **posterior mean** (deterministic, no sampling), scaled as diffusers' latent
pipelines do: ``z = (mean - shift_factor) * scaling_factor`` (``shift_factor`` 0 unless the VAE
config sets it). Decoding inverts the scaling: ``x = decode(z / scaling_factor + shift_factor)``.
Images are (N, C, H, W) in [-1, 1]; latents (N, latent_channels, H / f, W / f) with
``f = 2 ** (len(block_out_channels) - 1)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import Tensor

from lit_attr.errors import ConfigError

ENCODE_BATCH = 64
"""Images encoded (or latents decoded) per VAE call."""


def find_vae_folder(path: str | Path) -> Path:
    """The folder with the VAE's ``config.json``: ``path`` itself, or its ``vae/`` (or ``vqvae/``) of a pipeline."""
    path = Path(path).expanduser()
    for folder in (path, path / "vae", path / "vqvae"):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(f"--model.vae {path}: no AutoencoderKL here; point it at a local diffusers VAE folder "
                      "(config.json + diffusion_pytorch_model.safetensors) or a pipeline folder with vae/. "
                      "Nothing is downloaded.")


def load_vae(path: str | Path) -> AutoencoderKL:
    """A diffusers ``AutoencoderKL`` from a local folder, float32, frozen, eval mode; refuses partial loads."""
    folder = find_vae_folder(path)
    try:
        vae, info = AutoencoderKL.from_pretrained(str(folder), output_loading_info=True, torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, TypeError) as error:
        raise ConfigError(f"{folder}: cannot load it as a diffusers AutoencoderKL ({error}).") from error
    problems = {k: list(v)[:3] for k, v in info.items() if v}
    if problems:
        raise ConfigError(f"{folder}: the VAE weights do not match its config ({problems}); refusing a partial load.")
    return freeze(vae)


def freeze(vae: AutoencoderKL) -> AutoencoderKL:
    """Eval mode, no parameter gradients: the VAE is fixed; only the U-Net is trained and attributed."""
    return vae.eval().requires_grad_(False)


def downsample_factor(vae: AutoencoderKL) -> int:
    """``f``: the encoder halves the resolution once per level but the last."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def latent_shape(vae: AutoencoderKL, image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(latent_channels, H / f, W / f) of images (C, H, W); refuses a channel count or size the VAE cannot take."""
    channels, height, width = image_shape
    factor = downsample_factor(vae)
    if channels != vae.config.in_channels or height % factor or width % factor:
        raise ConfigError(f"The VAE takes {vae.config.in_channels}-channel images whose sides are multiples of {factor}, "
                          f"but the data has shape {tuple(image_shape)}; pass matching --data.* arguments.")
    return (vae.config.latent_channels, height // factor, width // factor)


def _shift(vae: AutoencoderKL) -> float:
    return float(getattr(vae.config, "shift_factor", None) or 0.0)


@torch.no_grad()
def encode_mean(vae: AutoencoderKL, images: Tensor) -> Tensor:
    """Scaled posterior means ``(mean - shift) * scaling_factor`` of images (N, C, H, W) in [-1, 1]."""
    parts = []
    for chunk in images.split(ENCODE_BATCH):
        mean = vae.encode(chunk.to(vae.device, vae.dtype)).latent_dist.mean
        parts.append((mean - _shift(vae)) * vae.config.scaling_factor)
    return torch.cat(parts).to(images.device)


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Images (N, C, H, W) clamped to [-1, 1] from scaled latents (inverse of ``encode_mean``'s scaling)."""
    parts = []
    for chunk in latents.split(ENCODE_BATCH):
        unscaled = chunk.to(vae.device, vae.dtype) / vae.config.scaling_factor + _shift(vae)
        parts.append(vae.decode(unscaled).sample.clamp(-1.0, 1.0))
    return torch.cat(parts).to(latents.device)
