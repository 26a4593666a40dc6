"""Image datasets whose items carry a stable dataset index.

Every item is a dict ``{"index": int, "image": Tensor}``: ``image`` is float32 of shape
(C, H, W) scaled to [-1, 1], and ``index`` is the example's *stable* index, which names it in
score matrices (rows of shape (num_train, num_queries)), done masks and index files whatever the
shuffling, batch size or device count. Digits and CIFAR items also carry ``"label": int`` (the digit,
the CIFAR-10 label), used by class-conditional models.

Datasets (``DATASET_NAMES``):

- ``digits``: scikit-learn's 1797 grey 8x8 digits (values 0..16), shipped with scikit-learn.
- ``patches``: 2080 colour 8x8 tiles of scikit-learn's two sample photographs (``lit_attr.data.patches``).
- ``photos``: 2048 colour 8x8 tiles of eight of scikit-image's bundled photographs (``lit_attr.data.photos``;
  needs scikit-image installed, its files are read, nothing is downloaded).
- ``cifar10``: the CIFAR-10 python batches in a local folder; never downloaded.
- ``cifar2``: CIFAR-2 of Mlodozeniec et al., "Influence Functions for Scalable Data Attribution
  in Diffusion Models", App. G.1 (after Zheng et al., 2024): ``num_per_class`` automobiles
  (label 1) and horses (label 7) drawn without replacement from the CIFAR-10 *train* split.
- ``folder``: any folder of PNG/JPEG images, searched recursively.

Random horizontal flips (App. G.8) are optional and use torch's default generator, so
``lightning.seed_everything`` makes them reproducible. The pieces live in ``indexed`` (base class, arrays,
subsets), ``cifar``, ``folders`` and ``index_files``; this module names the datasets and builds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lit_attr.data.cifar import load_cifar2_dataset, load_cifar10_dataset
from lit_attr.data.folders import ImageFolderDataset
from lit_attr.data.index_files import read_index_file
from lit_attr.data.indexed import ArrayImageDataset, IndexedDataset, SubsetDataset
from lit_attr.data.patches import load_patches_dataset
from lit_attr.data.photos import load_photos_dataset
from lit_attr.errors import ConfigError

DATASET_NAMES = ("digits", "patches", "photos", "cifar10", "cifar2", "folder")
BUNDLED_DATASETS = ("digits", "patches", "photos")
"""Datasets that ship with an installed package (no ``--data.data_dir``)."""
NATIVE_SHAPES = {"digits": (1, 8, 8), "patches": (3, 8, 8), "photos": (3, 8, 8), "cifar10": (3, 32, 32), "cifar2": (3, 32, 32)}


def load_digits_dataset(random_flip: bool = False) -> ArrayImageDataset:
    """scikit-learn's digits: 1797 images of shape (1, 8, 8), ``image = pixels / 8 - 1``, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1)
    return ArrayImageDataset(raw, max_value=16.0, labels=digits.target.tolist(), random_flip=random_flip)


def check_dataset_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is one of ``DATASET_NAMES``."""
    if name not in DATASET_NAMES:
        raise ConfigError(f"--data.dataset={name!r} is not supported; choose one of {', '.join(DATASET_NAMES)}.")


def _folder_shape(image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    if image_size is None or image_size < 1:
        raise ConfigError(
            f"dataset='folder' needs a positive --data.image_size (side of the square images), got {image_size}."
        )
    if channels not in (1, 3):
        raise ConfigError(f"dataset='folder' needs --data.channels 1 (grey) or 3 (RGB), got {channels}.")
    return (channels, image_size, image_size)


def image_shape_for(name: str, image_size: int | None = None, channels: int | None = None) -> tuple[int, int, int]:
    """The (C, H, W) shape of the images of a dataset, from the arguments alone (no data read).

    ``digits`` is (1, 8, 8) and ``cifar10``/``cifar2`` are (3, 32, 32); for them ``image_size``
    and ``channels`` may be left unset or must match. ``folder`` is
    (channels, image_size, image_size) and needs both.

    Raises:
        ConfigError: unknown name, or an ``image_size``/``channels`` that is missing or mismatched.
    """
    check_dataset_name(name)
    if name == "folder":
        return _folder_shape(image_size, channels)
    shape = NATIVE_SHAPES[name]
    if image_size not in (None, shape[1]):
        raise ConfigError(
            f"--data.image_size={image_size} does not fit dataset={name!r}, whose images are "
            f"{shape[1]}x{shape[2]}; leave it unset or set it to {shape[1]}."
        )
    if channels not in (None, shape[0]):
        raise ConfigError(
            f"--data.channels={channels} does not fit dataset={name!r}, whose images have {shape[0]} "
            f"channel(s); leave it unset or set it to {shape[0]}."
        )
    return shape


@dataclass(frozen=True)
class DatasetConfig:
    """Which dataset to build; the checks run at construction and name the CLI flags."""

    name: str = "digits"
    """One of ``DATASET_NAMES``."""
    data_dir: str | None = None
    """CIFAR-10 folder (or its parent) for cifar10/cifar2; image folder for folder."""
    image_size: int | None = None
    """Side of the square images; required for folder, optional (must match) otherwise."""
    channels: int | None = None
    """1 (grey) or 3 (RGB); required for folder, optional (must match) otherwise."""
    subset_file: str | None = None
    """Optional index file: keep only these stable indices (original indices are kept)."""
    train: bool = True
    """Train or test split (cifar10 only)."""
    random_flip: bool = False
    """Random horizontal flips (training augmentation, App. G.8)."""
    cifar2_seed: int = 0
    """Seed of the CIFAR-2 subsampling."""
    num_per_class: int = 2500
    """CIFAR-2 examples per class."""

    def __post_init__(self) -> None:
        image_shape_for(self.name, self.image_size, self.channels)
        if self.name not in BUNDLED_DATASETS and not self.data_dir:
            what = "image folder" if self.name == "folder" else "cifar-10-batches-py folder or its parent"
            raise ConfigError(f"dataset={self.name!r} needs --data.data_dir (the {what}); none was given.")
        if self.name == "cifar2" and not self.train:
            raise ConfigError("cifar2 is a subset of the CIFAR-10 train split; for test images use cifar10.")
        if self.num_per_class < 1 or self.cifar2_seed < 0:
            raise ConfigError(
                f"--data.num_per_class must be >= 1 and --data.cifar2_seed >= 0, got "
                f"{self.num_per_class} and {self.cifar2_seed}."
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of every image."""
        return image_shape_for(self.name, self.image_size, self.channels)

    def build_base(self) -> IndexedDataset:
        """The full dataset, before ``subset_file`` is applied."""
        if self.name == "digits":
            return load_digits_dataset(self.random_flip)
        if self.name == "patches":
            return load_patches_dataset(self.random_flip)
        if self.name == "photos":
            return load_photos_dataset(self.random_flip)
        if self.name == "cifar10":
            return load_cifar10_dataset(self.data_dir, self.train, self.random_flip)
        if self.name == "cifar2":
            return load_cifar2_dataset(self.data_dir, self.num_per_class, self.cifar2_seed, self.random_flip)
        channels, image_size, _ = self.image_shape
        return ImageFolderDataset(self.data_dir, image_size, channels, self.random_flip)

    def build(self) -> IndexedDataset:
        """The dataset, restricted to ``subset_file`` when one is given."""
        base = self.build_base()
        if self.subset_file is None:
            return base
        return SubsetDataset(base, read_index_file(self.subset_file, num_examples=len(base)))


def build_dataset(
    name: str,
    data_dir: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    train: bool = True,
    subset_file: str | None = None,
    random_flip: bool = False,
    cifar2_seed: int = 0,
    num_per_class: int = 2500,
) -> IndexedDataset:
    """Build a dataset by name; see ``DatasetConfig`` for the arguments.

    Returns:
        A dataset of ``{"index": int, "image": float32 (C, H, W) in [-1, 1]}`` items, with
        (C, H, W) given by ``image_shape_for(name, image_size, channels)``.
    """
    config = DatasetConfig(
        name, data_dir, image_size, channels, subset_file, train, random_flip, cifar2_seed, num_per_class
    )
    return config.build()
