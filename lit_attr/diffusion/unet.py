"""U-Net construction on diffusers' ``UNet2DModel`` with named presets.

The ``UNetConfig`` dataclass is the schema LightningCLI shows as ``--model.unet.*``; the image
shape (channels, size) comes from the data module, so it is not part of the config.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from diffusers import UNet2DModel

from lit_attr.errors import ConfigError
from lit_attr.validation import integer, number


@dataclass
class UNetConfig:
    """Architecture of the noise predictor (diffusers ``UNet2DModel`` arguments)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    """Channels per resolution level."""
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D")
    """One diffusers down block per level; ``AttnDownBlock2D`` adds self-attention."""
    up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "UpBlock2D")
    """One diffusers up block per level, mirrored."""
    layers_per_block: int = 1
    """ResNet blocks per level."""
    norm_num_groups: int = 8
    """GroupNorm groups (must divide every channel count)."""
    attention_head_dim: int | None = 8
    """Channels per attention head."""
    dropout: float = 0.0
    """Dropout inside ResNet blocks (Ho et al. use 0.1 on CIFAR-10)."""
    num_class_embeds: int | None = None
    """Classes of a class-conditional U-Net (the data's ``label`` is part of each example); None: unconditional."""

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(self.block_out_channels)
        self.down_block_types = tuple(self.down_block_types)
        self.up_block_types = tuple(self.up_block_types)
        levels = len(self.block_out_channels)
        for channels in self.block_out_channels:
            integer(channels, "--model.unet.block_out_channels entries", low=1)
        integer(self.layers_per_block, "--model.unet.layers_per_block", low=1)
        integer(self.norm_num_groups, "--model.unet.norm_num_groups", low=1)
        number(self.dropout, "--model.unet.dropout", 0.0, 1.0, high_open=True)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ConfigError(
                f"--model.unet.block_out_channels has {levels} levels but down_block_types has "
                f"{len(self.down_block_types)} and up_block_types {len(self.up_block_types)}; give one block per level."
            )
        if self.num_class_embeds is not None and self.num_class_embeds < 1:
            raise ValueError(f"--model.unet.num_class_embeds must be >= 1 (or null: unconditional), "
                             f"got {self.num_class_embeds}.")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"--model.unet.norm_num_groups={self.norm_num_groups} does not divide channels {bad}; "
                "choose a divisor of every entry of block_out_channels."
            )


def build_unet(config: UNetConfig, image_shape: tuple[int, int, int]) -> UNet2DModel:
    """A ``UNet2DModel`` for images of shape (C, H, W) with H == W."""
    channels, height, width = image_shape
    if height != width:
        raise ConfigError(f"Only square images are supported, got image_shape={tuple(image_shape)}.")
    kwargs = asdict(config)
    return UNet2DModel(sample_size=height, in_channels=channels, out_channels=channels, **kwargs)


def tiny_unet_config() -> UNetConfig:
    """A very small U-Net with one attention level, for tests (about 60k parameters)."""
    return UNetConfig(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8)


def plain_config(config: Any) -> dict[str, Any]:
    """A diffusers config as a plain JSON-able dict without the private ``_`` keys (hyperparameters stay plain)."""
    return {k: v for k, v in json.loads(json.dumps(dict(config))).items() if not k.startswith("_")}
