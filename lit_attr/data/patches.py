"""Real colour images that ship with scikit-learn: tiles of its two sample photographs.

``sklearn.datasets.load_sample_images`` bundles two 427 x 640 RGB photographs (``china.jpg``, a
temple; ``flower.jpg``). ``load_patches_dataset`` cuts each into non-overlapping
``tile x tile`` squares (row-major, china first) and averages ``tile / size`` x ``tile / size``
pixel blocks down to ``size x size``: with the defaults (tile 16, size 8) that is
2 x 26 x 40 = 2080 colour images of shape (3, 8, 8), a second real dataset beside the digits
(nothing is downloaded). Item ``index`` is the tile's position in that order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_attr.data.indexed import ArrayImageDataset
from lit_attr.errors import ConfigError

PATCH_TILE = 16
"""Side of the tiles cut from the photographs."""
PATCH_SIZE = 8
"""Side of the dataset's images (tiles are block-averaged to it)."""


def sample_photograph_tiles(tile: int = PATCH_TILE, size: int = PATCH_SIZE) -> torch.Tensor:
    """float32 (N, 3, size, size) in [0, 255]: the tiles of both photographs, block-averaged to ``size``."""
    from sklearn.datasets import load_sample_images

    if tile % size:
        raise ConfigError(f"patch tile {tile} must be a multiple of the image size {size}.")
    tiles = []
    for photo in load_sample_images().images:  # (H, W, 3) uint8
        image = torch.tensor(photo, dtype=torch.float32).permute(2, 0, 1)  # (3, H, W)
        rows, cols = image.shape[1] // tile, image.shape[2] // tile
        cropped = image[:, : rows * tile, : cols * tile]
        grid = cropped.reshape(3, rows, tile, cols, tile).permute(1, 3, 0, 2, 4).reshape(-1, 3, tile, tile)
        tiles.append(F.avg_pool2d(grid, tile // size))
    return torch.cat(tiles)


def load_patches_dataset(random_flip: bool = False) -> ArrayImageDataset:
    """The 2080 photograph tiles as a dataset: images (3, 8, 8), ``image = pixels / 127.5 - 1``."""
    return ArrayImageDataset(sample_photograph_tiles(), max_value=255.0, random_flip=random_flip)
