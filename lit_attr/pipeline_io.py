"""Export a trained DDPM as a diffusers ``DDPMPipeline`` folder and import one back.

The exported U-Net is the attribution weights (EMA). ``load_ddpm_module`` accepts either such a
folder or a Lightning checkpoint, so every tool of lit-attr takes both.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from lit_attr.checkpoints import module_from_checkpoint, read_checkpoint
from lit_attr.ddpm_module import DDPMModule, DiffusionConfig
from lit_attr.diffusion.unet import UNetConfig
from lit_attr.errors import ConfigError
from lit_attr.validation import check_finite_weights


def export_pipeline(module: DDPMModule, path: str | Path) -> Path:
    """Write ``path/{unet,scheduler}`` as a diffusers ``DDPMPipeline`` (small-variance sampler)."""
    schedule = module.schedule
    scheduler = DDPMScheduler(num_train_timesteps=schedule.num_timesteps, beta_start=schedule.beta_start,
                              beta_end=schedule.beta_end, beta_schedule="linear", variance_type="fixed_small")
    pipeline = DDPMPipeline(unet=module.attribution_unet, scheduler=scheduler)
    pipeline.save_pretrained(str(path))
    return Path(path)


def import_pipeline(path: str | Path) -> DDPMModule:
    """A ``DDPMModule`` (EMA disabled, eval mode) holding the U-Net of a ``DDPMPipeline`` folder."""
    path = Path(path)
    unet = UNet2DModel.from_pretrained(str(path / "unet"))
    scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    if scheduler.config.beta_schedule != "linear":
        raise ConfigError(f"{path}: only linear beta schedules are supported, got {scheduler.config.beta_schedule!r}.")
    names = {f.name for f in fields(UNetConfig)}
    unet_config = UNetConfig(**{k: v for k, v in unet.config.items() if k in names})
    diffusion = DiffusionConfig(scheduler.config.num_train_timesteps, scheduler.config.beta_start, scheduler.config.beta_end)
    image_shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    module = DDPMModule(image_shape=image_shape, unet=unet_config, diffusion=diffusion, ema_decay=0.0)
    module.unet.load_state_dict(unet.state_dict())
    return module.eval()


def load_ddpm_module(path: str | Path, map_location: str | torch.device = "cpu") -> DDPMModule:
    """Load a DDPM from a Lightning checkpoint (``.ckpt``) or a diffusers pipeline folder."""
    path = Path(path)
    if path.is_dir() and (path / "unet").is_dir():
        module = import_pipeline(path)
    elif path.is_file():
        module = module_from_checkpoint(read_checkpoint(path, "--model.checkpoint"), path, map_location)
    else:
        raise ConfigError(
            f"No model at {path}: pass a Lightning checkpoint (e.g. runs/digits/checkpoints/last.ckpt) "
            "or a diffusers DDPMPipeline folder containing unet/ and scheduler/."
        )
    check_finite_weights(module.attribution_unet, f"the model {path}")
    return module
