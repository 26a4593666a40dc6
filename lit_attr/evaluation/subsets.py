"""The LDS subsets D_i of a benchmark: sampling, their index files and the manifest that checks them.

Mlodozeniec et al., "Influence Functions for Scalable Data Attribution in Diffusion Models",
section 4 (eq. 13) and App. G.5, after Park et al. (2023), TRAK: M random subsets D_i of
``round(fraction * N)`` training examples each (App. G.5: M = 100, fraction = 0.5).

Layout under one benchmark ``root``::

    subsets/manifest.json                     arguments and SHA-256 of every file; written last
    subsets/train_indices.txt                 stable index of each score row (if not the identity)
    subsets/subset_{i:03d}/indices.txt        stable dataset indices of D_i (for --data.subset_file)

Subsets are given as *positions* 0..N-1 (rows of the ``(num_train, num_queries)`` score matrix);
the index files hold the corresponding stable dataset indices. The models retrained on them are
planned in ``lit_attr.evaluation.jobs``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_attr.constants import SUBSET_POSITIONS_FILE, SUBSETS_MANIFEST_FILE
from lit_attr.data.index_files import read_index_file, write_index_file
from lit_attr.errors import ConfigError, DataError
from lit_attr.evaluation.layout import BenchmarkLayout
from lit_attr.storage import read_json, write_atomic, write_json_atomic


def sample_lds_subsets(num_train: int, num_subsets: int, fraction: float = 0.5, seed: int = 0) -> list[np.ndarray]:
    """Draw the M subsets D_i of eq. (13), each without replacement.

    Subset i is drawn from ``SeedSequence(seed, spawn_key=(i,))`` (the i-th child of
    ``SeedSequence(seed).spawn``), so it does not depend on ``num_subsets``.

    Returns:
        ``num_subsets`` sorted int64 arrays of ``round(fraction * num_train)`` distinct positions
        in ``[0, num_train)``.

    Raises:
        ConfigError: for ``num_train < 2``, ``num_subsets < 1``, a negative seed, or a fraction
            whose subsets would be empty or the whole dataset.
    """
    size = subset_size(num_train, fraction)
    if num_subsets < 1 or seed < 0:
        raise ConfigError(f"Need num_subsets >= 1 and seed >= 0, got num_subsets={num_subsets}, seed={seed}.")
    subsets = []
    for i in range(num_subsets):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        subsets.append(np.sort(rng.choice(num_train, size=size, replace=False)).astype(np.int64))
    return subsets


def subset_size(num_train: int, fraction: float) -> int:
    """``round(fraction * num_train)``; ConfigError unless it lies in ``[1, num_train - 1]``."""
    size = round(fraction * num_train)
    if num_train < 2 or not 0 < fraction < 1 or not 1 <= size < num_train:
        raise ConfigError(
            f"fraction={fraction} of num_train={num_train} gives subsets of {size} examples; "
            "choose 0 < fraction < 1 so that each subset keeps at least one example and drops at least one."
        )
    return size


def subsets_path(root: str | Path) -> Path:
    """Folder of the subsets of a benchmark: ``root/subsets``."""
    return BenchmarkLayout.of(root).subsets_dir


def subset_indices_path(root: str | Path, subset_index: int) -> Path:
    """Index file of subset i: ``root/subsets/subset_{i:03d}/indices.txt``."""
    return BenchmarkLayout.of(root).subset_indices_file(subset_index)


def subsets_exist(root: str | Path) -> bool:
    """Whether ``write_subsets`` finished for ``root`` (its manifest is written last)."""
    return (subsets_path(root) / SUBSETS_MANIFEST_FILE).is_file()


def write_subsets(
    root: str | Path,
    subsets: Sequence[np.ndarray],
    train_indices: Sequence[int] | None = None,
    *,
    num_train: int | None = None,
    fraction: float | None = None,
    seed: int | None = None,
    overwrite: bool = False,
) -> None:
    """Write the subsets' index files and then, last and atomically, ``subsets/manifest.json``.

    Args:
        root: benchmark folder.
        subsets: M arrays of positions in ``[0, num_train)`` (from ``sample_lds_subsets``).
        train_indices: stable dataset index of each position (score row), length ``num_train``;
            ``None`` means position j is stable index j.
        num_train: N, the size of the full training set; defaults to ``len(train_indices)``.
        fraction: the subset fraction of ``sample_lds_subsets`` (recorded in the manifest).
        seed: the sampling seed of ``sample_lds_subsets`` (recorded in the manifest).
        overwrite: replace subsets written with different arguments.

    Raises:
        ConfigError: when ``root`` already holds subsets made with different arguments (or other
            subsets) and ``overwrite`` is false, or for positions outside ``[0, num_train)``.
    """
    if num_train is None and train_indices is None:
        raise ConfigError("write_subsets needs num_train (the size of the full training set) or train_indices.")
    num_train = len(train_indices) if num_train is None else num_train
    mapping = np.arange(num_train) if train_indices is None else np.asarray(train_indices, dtype=np.int64)
    if mapping.shape != (num_train,):
        raise ConfigError(f"train_indices has {len(mapping)} entries; expected num_train={num_train}.")
    if any(s.size == 0 or s.min() < 0 or s.max() >= num_train for s in map(np.asarray, subsets)):
        raise ConfigError(f"Subset positions must lie in [0, {num_train}); pass positions, not stable indices.")
    stable = [mapping[np.asarray(s)].tolist() for s in subsets]
    manifest = {"num_train": num_train, "fraction": fraction, "seed": seed, "num_subsets": len(subsets),
                "train_indices_sha256": _sha256(json.dumps(None if train_indices is None else mapping.tolist())),
                "subsets_sha256": _sha256(json.dumps(stable))}
    if _check_existing(root, manifest, overwrite, stable):
        return
    folder = _clear_subsets(root, len(subsets))
    files = {}
    for i, indices in enumerate(stable):
        files[f"subset_{i:03d}"] = _write_index_atomic(subset_indices_path(root, i), indices)
    if train_indices is not None:
        files[SUBSET_POSITIONS_FILE] = _write_index_atomic(folder / SUBSET_POSITIONS_FILE, mapping.tolist())
    write_json_atomic(folder / SUBSETS_MANIFEST_FILE, {**manifest, "files": files})


def create_subsets(
    root: str | Path,
    num_train: int,
    num_subsets: int,
    fraction: float = 0.5,
    seed: int = 0,
    train_indices: Sequence[int] | None = None,
    overwrite: bool = False,
) -> list[np.ndarray]:
    """``sample_lds_subsets`` then ``write_subsets``; returns the subsets as positions."""
    subsets = sample_lds_subsets(num_train, num_subsets, fraction, seed)
    write_subsets(root, subsets, train_indices, num_train=num_train, fraction=fraction, seed=seed,
                  overwrite=overwrite)
    return subsets


def read_subsets(root: str | Path) -> list[np.ndarray]:
    """The subsets written by ``write_subsets``, as sorted int64 positions (score rows).

    Raises:
        DataError: no manifest (run ``write_subsets`` first) or a file whose SHA-256 differs from
            the manifest.
    """
    manifest = read_subsets_manifest(root)
    folder = subsets_path(root)
    has_mapping = SUBSET_POSITIONS_FILE in manifest["files"]
    mapping = (_verified_indices(folder / SUBSET_POSITIONS_FILE, manifest, SUBSET_POSITIONS_FILE) if has_mapping
               else None)
    position_of = {int(index): position for position, index in enumerate(mapping or range(manifest["num_train"]))}
    subsets = []
    for i in range(manifest["num_subsets"]):
        indices = _verified_indices(subset_indices_path(root, i), manifest, f"subset_{i:03d}")
        subsets.append(np.sort(np.array([position_of[j] for j in indices], dtype=np.int64)))
    return subsets


def _verified_indices(path: Path, manifest: dict[str, Any], key: str) -> list[int]:
    """Read an index file after checking its SHA-256 against ``manifest["files"][key]``."""
    if not path.is_file() or file_sha256(path) != manifest["files"][key]:
        raise DataError(f"{path} is missing or differs from its SHA-256 in the subsets manifest; rewrite the "
                        "subsets with --overwrite true (models retrained on the old ones become invalid).")
    return read_index_file(path)


def read_subsets_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of ``write_subsets``; DataError naming the folder if it is missing."""
    path = subsets_path(root) / SUBSETS_MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; write the LDS subsets first (write_subsets / create_subsets).")
    return read_json(path)


def _check_existing(root: str | Path, manifest: dict[str, Any], overwrite: bool, stable: list[list[int]]) -> bool:
    """True if the same subsets are already written; ConfigError on a mismatch without ``overwrite``.

    More subsets drawn with the same arguments are not a mismatch when the written ones are their
    prefix (``sample_lds_subsets`` seeds subset i by i alone): the caller then adds the new files and
    the models already trained on the first subsets stay valid.
    """
    if not subsets_exist(root):
        return False
    old = read_subsets_manifest(root)
    differing = [f"{key}={_short(old.get(key))!r} (now {_short(value)!r})"
                 for key, value in manifest.items() if old.get(key) != value]
    if not differing or overwrite or _is_grown_prefix(root, old, manifest, stable):
        return not differing
    raise ConfigError(f"{subsets_path(root)} holds subsets made with {', '.join(differing)}. Use another root "
                      "or pass --overwrite true (models retrained on the old subsets become invalid).")


def _is_grown_prefix(root: str | Path, old: dict[str, Any], manifest: dict[str, Any], stable: list[list[int]]) -> bool:
    """Whether ``stable`` extends the written subsets: same arguments, more subsets, equal first ones."""
    same_arguments = all(old.get(key) == manifest[key]
                         for key in ("num_train", "fraction", "seed", "train_indices_sha256"))
    if not same_arguments or old.get("num_subsets", 0) >= manifest["num_subsets"]:
        return False
    return all(_verified_indices(subset_indices_path(root, i), old, f"subset_{i:03d}") == stable[i]
               for i in range(old["num_subsets"]))


def _short(value: Any) -> Any:
    """Hashes cut to 12 hex digits for messages; other values unchanged."""
    return value[:12] if isinstance(value, str) else value


def _clear_subsets(root: str | Path, num_subsets: int) -> Path:
    """Remove the manifest (the folder is incomplete until it is rewritten) and stale subset folders."""
    folder = subsets_path(root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUBSETS_MANIFEST_FILE).unlink(missing_ok=True)
    (folder / SUBSET_POSITIONS_FILE).unlink(missing_ok=True)
    for stale in folder.glob("subset_*"):
        number = stale.name.removeprefix("subset_")
        if stale.is_dir() and number.isdigit() and int(number) >= num_subsets:
            shutil.rmtree(stale)
    return folder


def _write_index_atomic(path: Path, indices: list[int]) -> str:
    """``write_index_file`` through ``write_atomic``; returns the file's SHA-256."""
    def write(tmp: Path) -> str:
        write_index_file(tmp, indices)
        return file_sha256(tmp)

    return write_atomic(path, write)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
