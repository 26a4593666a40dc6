"""Image datasets whose items carry a stable dataset index.

Every item is a dict ``{"index": int, "image": Tensor}``: ``image`` is float32 of shape
(C, H, W) scaled to [-1, 1], and ``index`` is the example's *stable* index, which names it in
score matrices (rows of shape (num_train, num_queries)), done masks and index files whatever the
shuffling, batch size or device count. Digits and CIFAR items also carry ``"label": int`` (the digit,
the CIFAR-10 label), used by class-conditional models.

Datasets (``DATASET_NAMES``):

- ``digits``: scikit-learn's 1797 grey 8x8 digits (values 0..16), shipped with scikit-learn.
- ``patches``: 2080 colour 8x8 tiles of scikit-learn's two sample photographs (``lit_attr.data.patches``).
- ``cifar10``: the CIFAR-10 python batches in a local folder; never downloaded.
- ``cifar2``: CIFAR-2 of Mlodozeniec et al., "Influence Functions for Scalable Data Attribution
  in Diffusion Models", App. G.1 (after Zheng et al., 2024): ``num_per_class`` automobiles
  (label 1) and horses (label 7) drawn without replacement from the CIFAR-10 *train* split.
- ``folder``: any folder of PNG/JPEG images, searched recursively.

Random horizontal flips (App. G.8) are optional and use torch's default generator, so
``lightning.seed_everything`` makes them reproducible.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from lit_attr.errors import ConfigError, DataError

DATASET_NAMES = ("digits", "patches", "cifar10", "cifar2", "folder")
BUNDLED_DATASETS = ("digits", "patches")
"""Datasets that ship with an installed package (no ``--data.data_dir``)."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR_FILES = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE)
CIFAR2_LABELS = (1, 7)
"""CIFAR-10 labels of the two CIFAR-2 classes: automobile and horse."""
NATIVE_SHAPES = {"digits": (1, 8, 8), "patches": (3, 8, 8), "cifar10": (3, 32, 32), "cifar2": (3, 32, 32)}


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


def load_digits_dataset(random_flip: bool = False) -> ArrayImageDataset:
    """scikit-learn's digits: 1797 images of shape (1, 8, 8), ``image = pixels / 8 - 1``, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    raw = torch.from_numpy(digits.images).to(torch.float32).unsqueeze(1)
    return ArrayImageDataset(raw, max_value=16.0, labels=digits.target.tolist(), random_flip=random_flip)


def find_cifar_folder(data_dir: str | Path) -> Path:
    """The folder holding the CIFAR-10 python batches: ``data_dir`` or ``data_dir/cifar-10-batches-py``.

    Raises:
        DataError: if neither folder holds all of ``CIFAR_FILES``; names the missing files and the fix.
    """
    root = Path(data_dir).expanduser()
    for folder in (root / CIFAR_FOLDER, root):
        if all((folder / name).is_file() for name in CIFAR_FILES):
            return folder
    folder = root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
    raise DataError(
        f"CIFAR-10 folder {folder} {state}; expected the python batches {', '.join(CIFAR_FILES)} "
        f"in {root} or in {root / CIFAR_FOLDER}. lit-attr never downloads data: get "
        "'CIFAR-10 python version' (cifar-10-python.tar.gz) from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, untar it and pass the folder with "
        "--data.data_dir."
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One pickled batch: ``(data uint8 (N, 3072), labels of length N)``."""
    try:
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = [int(label) for label in batch[b"labels"]]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"Cannot read CIFAR-10 batch {path} ({error!r}); it must be a pickled dict with b'data' "
            "and b'labels'. Re-extract cifar-10-python.tar.gz."
        ) from error
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(
            f"CIFAR-10 batch {path} has data of shape {data.shape} and {len(labels)} labels; "
            "expected (N, 3072) and N labels. Re-extract cifar-10-python.tar.gz."
        )
    return data, labels


def read_cifar10(data_dir: str | Path, train: bool = True) -> tuple[Tensor, list[int]]:
    """CIFAR-10 images as uint8 (N, 3, 32, 32) and their labels, in file order.

    Args:
        data_dir: the ``cifar-10-batches-py`` folder or its parent.
        train: the 50000 training images (``data_batch_1..5``) or the 10000 test images.

    Returns:
        ``(images, labels)``; images of shape (N, 3, 32, 32), uint8 in [0, 255].
    """
    folder = find_cifar_folder(data_dir)
    names = CIFAR_TRAIN_FILES if train else (CIFAR_TEST_FILE,)
    batches = [_read_cifar_batch(folder / name) for name in names]
    data = np.concatenate([data for data, _ in batches]).reshape(-1, 3, 32, 32)
    labels = [label for _, batch_labels in batches for label in batch_labels]
    return torch.from_numpy(data), labels


def load_cifar10_dataset(data_dir: str | Path, train: bool = True, random_flip: bool = False) -> ArrayImageDataset:
    """CIFAR-10 as an ``ArrayImageDataset`` (3, 32, 32), ``image = pixels / 127.5 - 1``; index = file order."""
    images, labels = read_cifar10(data_dir, train)
    return ArrayImageDataset(images, 255.0, labels, random_flip)


def select_cifar2(labels: Sequence[int], num_per_class: int = 2500, seed: int = 0) -> list[int]:
    """Positions of the CIFAR-2 examples among CIFAR-10 ``labels`` (App. G.1), sorted ascending.

    For each class in ``CIFAR2_LABELS`` (automobile, then horse), draws ``num_per_class``
    positions without replacement with ``numpy.random.default_rng(seed)``.

    Returns:
        ``2 * num_per_class`` sorted CIFAR-10 positions; the CIFAR-2 stable index of an example
        is its position in this list.
    """
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    chosen = []
    for label in CIFAR2_LABELS:
        candidates = np.flatnonzero(label_array == label)
        if len(candidates) < num_per_class:
            raise DataError(
                f"CIFAR-2 needs num_per_class={num_per_class} images of label {label} but the CIFAR-10 "
                f"train split has {len(candidates)}; lower --data.num_per_class."
            )
        chosen.append(rng.choice(candidates, size=num_per_class, replace=False))
    return sorted(int(position) for position in np.concatenate(chosen))


def load_cifar2_dataset(
    data_dir: str | Path, num_per_class: int = 2500, seed: int = 0, random_flip: bool = False
) -> ArrayImageDataset:
    """CIFAR-2 (App. G.1): images (3, 32, 32); stable index = position in the sorted selection.

    The returned dataset's ``source_indices`` attribute holds the CIFAR-10 train positions.
    """
    images, labels = read_cifar10(data_dir, train=True)
    selection = select_cifar2(labels, num_per_class, seed)
    dataset = ArrayImageDataset(
        images[selection], 255.0, [labels[i] for i in selection], random_flip
    )
    dataset.source_indices = selection
    return dataset


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


def _parse_index_line(line: str, line_number: int, path: Path, num_examples: int | None) -> int | None:
    """The index on one line of an index file, or None for a blank or comment-only line."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    try:
        index = int(text)
    except ValueError:
        raise DataError(
            f"{path}:{line_number}: {text!r} is not an integer; write one stable dataset index per line."
        ) from None
    if index < 0 or (num_examples is not None and index >= num_examples):
        upper = "" if num_examples is None else f" and below {num_examples}"
        raise DataError(f"{path}:{line_number}: index {index} is out of range; indices must be >= 0{upper}.")
    return index


def read_index_file(path: str | Path, num_examples: int | None = None) -> list[int]:
    """Stable dataset indices from a text file, one integer per line, in file order.

    Blank lines and ``#`` comments (whole-line or trailing) are ignored.

    Args:
        path: the index file.
        num_examples: if given, every index must lie in ``[0, num_examples)``.

    Raises:
        DataError: missing file, a non-integer, an out-of-range or duplicate index (naming the
            line numbers), or no index at all.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"Index file {path} does not exist; pass an existing file with --data.subset_file.")
    first_line: dict[int, int] = {}
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        index = _parse_index_line(line, line_number, path, num_examples)
        if index is None:
            continue
        if index in first_line:
            raise DataError(
                f"{path}:{line_number}: index {index} repeats line {first_line[index]}; list each index once."
            )
        first_line[index] = line_number
    if not first_line:
        raise DataError(f"Index file {path} lists no indices; write one stable dataset index per line.")
    return list(first_line)


def write_index_file(path: str | Path, indices: Sequence[int]) -> None:
    """Write stable dataset indices one per line (in the given order), readable by ``read_index_file``.

    Raises:
        DataError: for a negative or duplicate index.
    """
    values = [int(index) for index in indices]
    if any(index < 0 for index in values) or len(set(values)) != len(values):
        raise DataError(f"Cannot write {path}: indices must be distinct and non-negative.")
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {len(values)} stable dataset indices\n" + "".join(f"{i}\n" for i in values))


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
            from lit_attr.data.patches import load_patches_dataset  # patches imports this module

            return load_patches_dataset(self.random_flip)
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
