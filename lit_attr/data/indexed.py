"""Datasets whose items carry a stable index: the base class, in-memory image arrays and subsets.

Every item is a dict ``{"index": int, "image": Tensor}``: ``image`` is float32 of shape (C, H, W) scaled to
[-1, 1], and ``index`` is the example's *stable* index, which names it in score matrices (rows of shape
(num_train, num_queries)), done masks and index files whatever the shuffling, batch size or device count.
Random horizontal flips (App. G.8) use torch's default generator, so ``lightning.seed_everything`` makes them
reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_attr.errors import DataError


class IndexedDataset(Dataset):
    """Base class: a map-style dataset whose items are dicts with a stable ``"index"``.

    Attributes:
        indices: the stable index of the item at each position, ``len(indices) == len(self)``.
    """

    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)


def maybe_flip(image: Tensor, random_flip: bool) -> Tensor:
    """Flip an image (C, H, W) left-right with probability 1/2 when ``random_flip`` is set."""
    if random_flip and bool(torch.rand(()) < 0.5):
        return image.flip(-1)
    return image


class ArrayImageDataset(IndexedDataset):
    """Images held in memory as raw values, scaled on access: ``image = raw / (max_value / 2) - 1``.

    Args:
        raw: images of shape (N, C, H, W), any dtype (uint8 for CIFAR, float32 for digits).
        max_value: the raw value that maps to 1 (0 maps to -1): 255 for CIFAR, 16 for digits.
        labels: optional class labels of length N, returned as ``"label"``.
        random_flip: flip images left-right with probability 1/2 (training augmentation).
    """

    def __init__(
        self,
        raw: Tensor,
        max_value: float,
        labels: Sequence[int] | None = None,
        random_flip: bool = False,
    ) -> None:
        if labels is not None and len(labels) != len(raw):
            raise DataError(f"Got {len(labels)} labels for {len(raw)} images; they must match.")
        self.raw, self.half_range = raw, max_value / 2.0
        self.labels = None if labels is None else [int(label) for label in labels]
        self.random_flip = random_flip
        self.indices = list(range(len(raw)))

    def __getitem__(self, position: int) -> dict[str, Tensor | int]:
        image = self.raw[position].to(torch.float32) / self.half_range - 1.0
        item: dict[str, Tensor | int] = {
            "index": self.indices[position],
            "image": maybe_flip(image, self.random_flip),
        }
        if self.labels is not None:
            item["label"] = self.labels[position]
        return item


class SubsetDataset(IndexedDataset):
    """The examples of ``base`` with the given stable indices, keeping their original indices.

    Args:
        base: the full dataset.
        indices: stable indices of ``base`` (not positions), in the order to serve them.

    Raises:
        DataError: for a duplicate index or one that ``base`` does not have.
    """

    def __init__(self, base: IndexedDataset, indices: Sequence[int]) -> None:
        position_of = {index: position for position, index in enumerate(base.indices)}
        self.indices = [int(index) for index in indices]
        if len(set(self.indices)) != len(self.indices):
            raise DataError("Subset indices contain duplicates; list each stable index once.")
        unknown = [index for index in self.indices if index not in position_of]
        if unknown:
            raise DataError(
                f"Subset indices {unknown[:5]} are not in the dataset of {len(base)} examples "
                f"(stable indices {min(position_of)}..{max(position_of)}); fix the index file."
            )
        self.base = base
        self.positions = [position_of[index] for index in self.indices]

    def __getitem__(self, position: int) -> dict[str, Tensor | int]:
        return self.base[self.positions[position]]
