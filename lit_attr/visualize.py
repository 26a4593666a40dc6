"""Image grids for samples and attribution figures (PNG and TensorBoard)."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image


def to_display(images: Tensor, min_size: int = 32) -> Tensor:
    """Map [-1, 1] images (N, C, H, W) to [0, 1], upscaled (nearest) to at least ``min_size`` pixels."""
    images = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    scale = max(1, -(-min_size // images.shape[-1]))
    return F.interpolate(images, scale_factor=scale, mode="nearest") if scale > 1 else images


def image_grid(images: Tensor, nrow: int = 8, min_size: int = 32, padding: int = 2) -> Tensor:
    """A (3 or C, H', W') grid in [0, 1] of images given in [-1, 1] with shape (N, C, H, W)."""
    return make_grid(to_display(images, min_size), nrow=nrow, padding=padding, pad_value=1.0)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, min_size: int = 32) -> Path:
    """Save ``image_grid(images)`` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(image_grid(images, nrow=nrow, min_size=min_size), path)
    return path


def log_grid(logger: object, tag: str, images: Tensor, step: int, nrow: int = 8) -> None:
    """Log a grid to a TensorBoard logger (no-op for other loggers)."""
    experiment = getattr(logger, "experiment", None)
    if experiment is not None and hasattr(experiment, "add_image"):
        experiment.add_image(tag, image_grid(images, nrow=nrow), global_step=step)


__all__ = ["image_grid", "log_grid", "save_grid", "to_display"]
