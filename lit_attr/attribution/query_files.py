"""Query images from a tensor file, exactly: ``.npy``, ``.pt``/``.pth`` or ``.safetensors``.

Generated samples from another tool lose precision as 8-bit PNGs; a float tensor keeps them
exactly. The file holds float images of shape (N, C, H, W) (or one image (C, H, W)) in [-1, 1]
with the model's (C, H, W); ``.pt`` and ``.safetensors`` files may instead hold a dict with
``"images"`` and, for class-conditional models, ``"labels"`` (N,) integers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_attr.errors import DataError

QUERY_FILE_SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")
RANGE_TOLERANCE = 1e-4
"""Values up to this far outside [-1, 1] (float rounding) are accepted and clamped."""


def _read(path: Path) -> dict[str, Tensor]:
    """The file's tensors by name (a bare array or tensor is ``"images"``)."""
    if path.suffix == ".npy":
        return {"images": torch.from_numpy(np.load(path, allow_pickle=False))}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        content = load_file(str(path))
    else:
        content = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(content, Tensor):
        return {"images": content}
    if isinstance(content, dict) and len(content) == 1 and "labels" not in content:
        return {"images": next(iter(content.values()))}
    if isinstance(content, dict) and "images" in content:
        return content
    keys = sorted(content) if isinstance(content, dict) else type(content).__name__
    raise DataError(f"--model.queries.file {path}: expected one tensor or a dict with 'images' (and 'labels'), "
                    f"got {keys}.")


def check_query_images(images: Tensor, image_shape: tuple[int, int, int], where: str) -> Tensor:
    """Float32 (N, C, H, W) images in [-1, 1] with the model's (C, H, W), or a ``DataError`` naming the problem."""
    if not torch.is_floating_point(images):
        raise DataError(f"{where}: the images are {images.dtype}, not floats; save float images in [-1, 1] "
                        "(8-bit pixels p: p / 127.5 - 1).")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or tuple(images.shape[1:]) != tuple(image_shape) or len(images) == 0:
        raise DataError(f"{where}: the images have shape {tuple(images.shape)}; the model needs (N, C, H, W) = "
                        f"(N, {', '.join(map(str, image_shape))}) with N >= 1.")
    images = images.to(torch.float32)
    if not bool(torch.isfinite(images).all()):
        raise DataError(f"{where}: the images contain NaN or infinite values.")
    low, high = images.min().item(), images.max().item()
    if low < -1 - RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise DataError(f"{where}: the values span [{low:.4g}, {high:.4g}]; the model's images are in [-1, 1] "
                        "(from [0, 1]: 2 x - 1; from 8-bit: p / 127.5 - 1).")
    return images.clamp(-1.0, 1.0)


def load_query_file(path: str | Path, image_shape: tuple[int, int, int]) -> tuple[Tensor, Tensor | None]:
    """Images (N, C, H, W) float32 in [-1, 1] and labels (N,) int64 or None from a query tensor file."""
    path = Path(path).expanduser()
    where = f"--model.queries.file {path}"
    if path.suffix not in QUERY_FILE_SUFFIXES:
        raise DataError(f"{where}: unknown file type {path.suffix!r}; use one of {', '.join(QUERY_FILE_SUFFIXES)}.")
    if not path.is_file():
        raise DataError(f"{where} does not exist; pass a {'/'.join(QUERY_FILE_SUFFIXES)} file of float images "
                        "(N, C, H, W) in [-1, 1].")
    try:
        content = _read(path)
    except (OSError, ValueError, RuntimeError) as error:
        raise DataError(f"{where}: cannot read it ({error}).") from error
    images = check_query_images(content["images"], image_shape, where)
    labels = content.get("labels")
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        if torch.is_floating_point(labels) or len(labels) != len(images):
            raise DataError(f"{where}: 'labels' must be {len(images)} integers, one per image; got {tuple(labels.shape)} "
                            f"{labels.dtype}.")
        labels = labels.to(torch.int64)
    return images, labels
