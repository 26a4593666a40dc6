"""Any folder of PNG/JPEG images, searched recursively, as an indexed dataset (center-cropped and resized)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lit_attr.data.indexed import IndexedDataset, maybe_flip
from lit_attr.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
def find_image_files(root: str | Path, flag: str = "--data.data_dir") -> list[str]:
    """Relative POSIX paths of the PNG/JPEG files under ``root`` (recursive), sorted.

    Raises:
        DataError: if ``root`` is not a folder or holds no image with an ``IMAGE_EXTENSIONS`` suffix;
            the message names ``flag``, the argument that gave the folder.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"Image folder {folder} does not exist; pass an existing folder with {flag}.")
    files = sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not files:
        raise DataError(
            f"Image folder {folder} contains no images (searched recursively for "
            f"{', '.join(IMAGE_EXTENSIONS)}, any case); add images or pass another {flag}."
        )
    return files


def center_crop_square(image: Image.Image) -> Image.Image:
    """The largest centered square of an image (integer pixel box, no resampling)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


class ImageFolderDataset(IndexedDataset):
    """PNG/JPEG files under a folder; the stable index is the position in the sorted relative paths.

    Each file is converted to grey ("L", 1 channel) or RGB (3 channels), center-cropped to a
    square and resized to ``image_size`` with Pillow's bilinear filter (antialiased when
    shrinking), giving images of shape (channels, image_size, image_size) in [-1, 1].

    Args:
        root: the folder, searched recursively.
        image_size: side of the square output images.
        channels: 1 (grey) or 3 (RGB).
        random_flip: flip images left-right with probability 1/2 (training augmentation).
        flag: the argument that gave ``root``, named in errors.
    """

    def __init__(self, root: str | Path, image_size: int, channels: int, random_flip: bool = False,
                 flag: str = "--data.data_dir") -> None:
        self.root = Path(root).expanduser()
        self.files = find_image_files(self.root, flag)
        self.image_size, self.mode = image_size, "L" if channels == 1 else "RGB"
        self.random_flip = random_flip
        self.indices = list(range(len(self.files)))

    def load_image(self, position: int) -> Tensor:
        """The image at ``position`` as float32 (C, image_size, image_size) in [-1, 1]."""
        path = self.root / self.files[position]
        try:
            with Image.open(path) as opened:
                image = opened.convert(self.mode)
        except OSError as error:
            raise DataError(f"Cannot read image {path} ({error}); remove or replace the file.") from error
        size = (self.image_size, self.image_size)
        image = center_crop_square(image).resize(size, Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).reshape(*size, -1)
        return pixels.permute(2, 0, 1).to(torch.float32) / 127.5 - 1.0

    def __getitem__(self, position: int) -> dict[str, Tensor | int]:
        image = maybe_flip(self.load_image(position), self.random_flip)
        return {"index": self.indices[position], "image": image}
