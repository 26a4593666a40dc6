"""Real colour images that ship with scikit-image: tiles of eight of its bundled photographs.

scikit-image's wheel carries its sample photographs as files (``skimage/data/*.png|jpg``); eight of
them are colour photographs of unrelated scenes (an astronaut, a cat, a coffee cup, a rocket, a
motorcycle, the Hubble deep field, a stained tissue section, a retina). ``load_photos_dataset`` takes
the central square of each (the central 70% of the retina, whose corners are black), resizes it to
``side x side`` with PIL's box filter and cuts it into non-overlapping ``size x size`` tiles
(row-major, photographs in the order of ``PHOTOGRAPHS``): with the defaults (side 128, size 8)
that is 8 x 16 x 16 = 2048 colour images of shape (3, 8, 8). Beside ``patches`` (tiles of two
photographs) it is a third real dataset with more varied content; nothing is downloaded and
scikit-image itself is never imported, only its files are read.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from lit_attr.data.indexed import ArrayImageDataset
from lit_attr.errors import ConfigError

PHOTOGRAPHS = (
    ("astronaut.png", 1.0),
    ("chelsea.png", 1.0),
    ("coffee.png", 1.0),
    ("rocket.jpg", 1.0),
    ("motorcycle_left.png", 1.0),
    ("hubble_deep_field.jpg", 1.0),
    ("ihc.png", 1.0),
    ("retina.jpg", 0.7),
)
"""(file in ``skimage/data``, fraction of the shorter side kept by the central square crop)."""
PHOTO_SIDE = 128
"""Side each photograph's square is resized to before tiling."""
PHOTO_TILE = 8
"""Side of the dataset's images."""


def scikit_image_data_dir() -> Path:
    """The folder of scikit-image's bundled sample images; ``ConfigError`` when it is not installed."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "--data.dataset=photos reads the sample photographs bundled with scikit-image, which is not "
            "installed; run `pip install scikit-image` (or `pip install -e '.[photos]'`)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _square_photograph(path: Path, keep: float, side: int) -> torch.Tensor:
    """float32 (3, side, side) in [0, 255]: the photograph's central square, box-resized to ``side``."""
    from PIL import Image

    if not path.is_file():
        raise ConfigError(f"scikit-image's sample photograph {path} is missing; reinstall scikit-image.")
    with Image.open(path) as photo:
        rgb = photo.convert("RGB")
        crop = int(min(rgb.size) * keep)
        left, top = (rgb.size[0] - crop) // 2, (rgb.size[1] - crop) // 2
        square = rgb.crop((left, top, left + crop, top + crop)).resize((side, side), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(square, dtype=np.float32).copy()).permute(2, 0, 1)


def photograph_tiles(side: int = PHOTO_SIDE, size: int = PHOTO_TILE) -> torch.Tensor:
    """float32 (N, 3, size, size) in [0, 255], N = len(PHOTOGRAPHS) * (side // size)^2: every tile."""
    if side % size:
        raise ConfigError(f"photograph side {side} must be a multiple of the tile size {size}.")
    data_dir = scikit_image_data_dir()
    cells = side // size
    tiles = []
    for name, keep in PHOTOGRAPHS:
        image = _square_photograph(data_dir / name, keep, side)  # (3, side, side)
        grid = image.reshape(3, cells, size, cells, size).permute(1, 3, 0, 2, 4)
        tiles.append(grid.reshape(-1, 3, size, size))
    return torch.cat(tiles)


def load_photos_dataset(random_flip: bool = False) -> ArrayImageDataset:
    """The 2048 photograph tiles as a dataset: images (3, 8, 8), ``image = pixels / 127.5 - 1``.

    Item ``index`` is the tile's position in ``photograph_tiles``; ``label`` is the photograph it came
    from (0..7, the order of ``PHOTOGRAPHS``).
    """
    tiles = photograph_tiles()
    per_photo = tiles.shape[0] // len(PHOTOGRAPHS)
    labels = [i // per_photo for i in range(tiles.shape[0])]
    return ArrayImageDataset(tiles, max_value=255.0, labels=labels, random_flip=random_flip)
