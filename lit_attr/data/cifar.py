"""CIFAR-10 from its local python batches (never downloaded), and CIFAR-2 of Mlodozeniec et al., App. G.1:
``num_per_class`` automobiles (label 1) and horses (label 7) drawn without replacement from the train split."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_attr.data.indexed import ArrayImageDataset
from lit_attr.errors import DataError

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_META_FILE = "batches.meta"
CIFAR_FILES = (*CIFAR_TRAIN_FILES, CIFAR_TEST_FILE, CIFAR_META_FILE)
CIFAR2_LABELS = (1, 7)
"""CIFAR-10 labels of the two CIFAR-2 classes: automobile and horse."""
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
