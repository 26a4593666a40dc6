"""``ScoreStore``: the memory-mapped score matrix of one attribution run, resumable and atomic.

Layout of an output folder::

    scores.npy        float32 (or float16) memmap, shape (num_train, num_queries): row j holds the
                      influence of training example j on every query
    scores_done.npy   uint8 (num_train,): 1 once row j is written
    metadata.json     arguments, dataset size/index hash, model hash; "finalized": true is
                      written last (temporary file + os.replace), so a killed run never looks complete;
                      "checksums": SHA-256 of every output file, verified by the readers

A store whose files no longer match their checksums (or cannot be read) is refused with the fix
(``--model.overwrite true``); the refusal marks it ``"damaged"`` and not finalized, and removes the
report derived from it, so nothing complete-looking is left. ``--overwrite`` always starts afresh.

Each rank writes disjoint rows (its own training examples), so several processes can write the
same files without locks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from lit_attr.constants import (
    CHECKSUMS_KEY,
    DAMAGED_KEY,
    DONE_MASK_FILE,
    FINALIZED_KEY,
    METADATA_FILE,
    REPORT_FILES,
    RUN_FILES,
    SCORES_FILE,
    VOLATILE_METADATA_KEYS,
)
from lit_attr.errors import DamagedOutputError, StoreMismatchError

OVERWRITE_FIX = "rerun with --model.overwrite true (attribute.py) to recompute the run"
T = TypeVar("T")


def write_atomic(path: str | Path, write: Callable[[Path], T]) -> T:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, then ``os.replace``: readers never
    see half a file, and a ``write`` that raises leaves neither ``path`` nor the temporary file.

    The temporary name keeps ``path``'s suffix (``np.save`` / ``np.savez`` append theirs to names without it)
    and holds the process id, so processes writing the same file do not share one.

    Returns:
        What ``write`` returns (e.g. a checksum of the temporary file).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        result = write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON (sorted keys) with ``write_atomic`` so readers never see half a file."""
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str)))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def file_checksum(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (first 16 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def read_metadata(output_dir: str | Path) -> dict[str, Any]:
    """``metadata.json`` of a run folder.

    Raises:
        DamagedOutputError: it is not valid JSON (e.g. truncated); the folder is marked damaged first.
    """
    path = Path(output_dir) / METADATA_FILE
    try:
        return read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise mark_damaged(Path(output_dir), [METADATA_FILE], f"not valid JSON: {error}") from None


def record_checksums(output_dir: str | Path, names: list[str]) -> None:
    """Add the checksums of ``names`` (files in ``output_dir``) to its metadata (atomically)."""
    output_dir = Path(output_dir)
    metadata = read_metadata(output_dir)
    checksums = {**metadata.get(CHECKSUMS_KEY, {}), **{name: file_checksum(output_dir / name) for name in names}}
    write_json_atomic(output_dir / METADATA_FILE, {**metadata, CHECKSUMS_KEY: checksums})


def verify_checksums(output_dir: str | Path, names: list[str] | None = None) -> None:
    """Check files against the checksums in the metadata (all recorded ones if ``names`` is None).

    Files without a recorded checksum (older runs) are not checked.

    Raises:
        DamagedOutputError: a file is missing or changed; the store is marked damaged first.
    """
    output_dir = Path(output_dir)
    recorded = read_metadata(output_dir).get(CHECKSUMS_KEY, {})
    damaged = [name for name in (recorded if names is None else names) if name in recorded
               and (not (output_dir / name).is_file() or file_checksum(output_dir / name) != recorded[name])]
    if damaged:
        raise mark_damaged(output_dir, damaged, "missing, or changed since it was written: its checksum in "
                                               "metadata.json does not match")


def mark_damaged(output_dir: Path, names: list[str], why: str) -> DamagedOutputError:
    """Mark a store damaged and not finalized, remove the report derived from it; returns the error to raise."""
    metadata_path = output_dir / METADATA_FILE
    try:
        metadata = read_json(metadata_path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        metadata = {}
    write_json_atomic(metadata_path, {**metadata, FINALIZED_KEY: False, DAMAGED_KEY: sorted(names)})
    for name in REPORT_FILES:
        (output_dir / name).unlink(missing_ok=True)
    listed = ", ".join(names)
    return DamagedOutputError(f"{listed} in {output_dir} is damaged ({why}); {OVERWRITE_FIX}.")


def remove_run_files(output_dir: str | Path) -> None:
    """Delete every output of an attribution run in ``output_dir`` (metadata first), keeping factors/ and logs."""
    output_dir = Path(output_dir)
    for name in (METADATA_FILE, *RUN_FILES):
        (output_dir / name).unlink(missing_ok=True)


def metadata_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two metadata dicts, ignoring volatile keys."""
    keys = (set(old) | set(new)) - VOLATILE_METADATA_KEYS
    normalise = lambda value: json.loads(json.dumps(value, default=str))  # noqa: E731
    return {k: (old.get(k), new.get(k)) for k in sorted(keys) if normalise(old.get(k)) != normalise(new.get(k))}


class ScoreStore:
    """The score matrix of one run in ``output_dir``.

    Args:
        output_dir: the run folder.
        num_train: rows (training examples).
        num_queries: columns (queries).
        metadata: everything that determines the scores; compared on reopen.
        dtype: ``"float32"`` or ``"float16"``.
    """

    def __init__(self, output_dir: str | Path, num_train: int, num_queries: int, metadata: dict[str, Any],
                 dtype: str = "float32") -> None:
        if dtype not in ("float32", "float16"):
            raise ValueError(f"score dtype must be 'float32' or 'float16', got {dtype!r}.")
        self.output_dir = Path(output_dir)
        self.num_train, self.num_queries, self.dtype = num_train, num_queries, dtype
        self.metadata = {**metadata, "num_train": num_train, "num_queries": num_queries, "score_dtype": dtype}
        self._scores: np.memmap | None = None
        self._done: np.memmap | None = None

    @property
    def metadata_path(self) -> Path:
        return self.output_dir / METADATA_FILE

    def check(self, overwrite: bool = False) -> bool:
        """Whether the folder holds a resumable run with this metadata (safe on every rank).

        With ``overwrite`` nothing is read: the run starts afresh (``create`` replaces the files).

        Raises:
            StoreMismatchError: the folder holds a run with other settings.
            DamagedOutputError: the stored files do not match their checksums or cannot be read.
        """
        if overwrite or not self.metadata_path.exists():
            return False
        stored = read_metadata(self.output_dir)
        if stored.get(DAMAGED_KEY):
            raise DamagedOutputError(f"{', '.join(stored[DAMAGED_KEY])} in {self.output_dir} was found damaged by an "
                                     f"earlier run; {OVERWRITE_FIX}.")
        differences = metadata_differences(stored, self.metadata)
        if differences:
            listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise StoreMismatchError(
                f"{self.output_dir} holds scores computed with other settings ({listed}). "
                "Use a new --model.output_dir, or pass --model.overwrite true to discard them."
            )
        self._check_files(stored)
        return True

    def _check_files(self, stored: dict[str, Any]) -> None:
        """Finalized: every checksum; interrupted: the score files open with the right shapes."""
        if stored.get(FINALIZED_KEY):
            verify_checksums(self.output_dir)
            return
        expected = {SCORES_FILE: (self.num_train, self.num_queries), DONE_MASK_FILE: (self.num_train,)}
        for name, shape in expected.items():
            try:
                found = np.load(self.output_dir / name, mmap_mode="r").shape
            except (OSError, ValueError) as error:
                raise mark_damaged(self.output_dir, [name], f"unreadable: {error}") from None
            if tuple(found) != shape:
                raise mark_damaged(self.output_dir, [name], f"shape {tuple(found)} instead of {shape}")

    def prepare(self, overwrite: bool = False, files: list[str] | None = None) -> None:
        """Keep an interrupted run with the same metadata, else ``create`` the files (rank 0 only)."""
        if not self.check(overwrite):
            self.create(files)

    def create(self, files: list[str] | None = None) -> None:
        """Fresh score files and metadata (not finalized), replacing an old store and its report.

        Args:
            files: names of files already written into the folder for this run (queries, indices)
                whose checksums go into the new metadata.
        """
        self._remove_score_files()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(self.output_dir / SCORES_FILE, mode="w+", dtype=self.dtype,
                                  shape=(self.num_train, self.num_queries)).flush()
        np.lib.format.open_memmap(self.output_dir / DONE_MASK_FILE, mode="w+", dtype=np.uint8,
                                  shape=(self.num_train,)).flush()
        checksums = {name: file_checksum(self.output_dir / name) for name in files or []}
        write_json_atomic(self.metadata_path, {**self.metadata, FINALIZED_KEY: False, "created": time.time(),
                                               CHECKSUMS_KEY: checksums})

    def _remove_score_files(self) -> None:
        for name in (METADATA_FILE, SCORES_FILE, DONE_MASK_FILE, *REPORT_FILES):
            (self.output_dir / name).unlink(missing_ok=True)

    def open(self) -> None:
        """Open the memmaps for reading and writing (every rank, after ``prepare``)."""
        self._scores = np.load(self.output_dir / SCORES_FILE, mmap_mode="r+")
        self._done = np.load(self.output_dir / DONE_MASK_FILE, mmap_mode="r+")

    def done_indices(self) -> np.ndarray:
        """Training indices whose rows are already written, shape (num_done,)."""
        return np.flatnonzero(np.load(self.output_dir / DONE_MASK_FILE, mmap_mode="r"))

    def write_rows(self, indices: np.ndarray, scores: np.ndarray) -> None:
        """Write ``scores`` (B, num_queries) into rows ``indices`` (B,) and mark them done."""
        assert self._scores is not None and self._done is not None, "call open() first"
        self._scores[indices] = scores.astype(self.dtype, copy=False)
        self._done[indices] = 1

    def flush(self) -> None:
        """Flush the score rows first, then the done mask (so a row is never marked done unwritten)."""
        if self._scores is not None:
            self._scores.flush()
            self._done.flush()

    def finalize(self, extra: dict[str, Any] | None = None) -> None:
        """Check every row is done, then write ``finalized: true`` into the metadata (last, atomically)."""
        self.flush()
        missing = self.num_train - int(np.count_nonzero(np.load(self.output_dir / DONE_MASK_FILE)))
        if missing:
            raise RuntimeError(f"{missing} of {self.num_train} rows of {self.output_dir / SCORES_FILE} are missing.")
        stored = read_metadata(self.output_dir)
        checksums = {**stored.get(CHECKSUMS_KEY, {}),
                     **{name: file_checksum(self.output_dir / name) for name in (SCORES_FILE, DONE_MASK_FILE)}}
        write_json_atomic(self.metadata_path, {**stored, **(extra or {}), CHECKSUMS_KEY: checksums,
                                               FINALIZED_KEY: True, "finished": time.time()})


def load_scores(output_dir: str | Path, allow_partial: bool = False) -> np.ndarray:
    """The score matrix (num_train, num_queries) of a finished run.

    Positive score: removing that training example is predicted to increase the query's
    measurement (its loss), i.e. the example made the query more probable.
    """
    output_dir = Path(output_dir)
    meta_path = output_dir / METADATA_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"No attribution run in {output_dir} (missing {METADATA_FILE}).")
    if not allow_partial and not read_metadata(output_dir).get(FINALIZED_KEY):
        raise RuntimeError(f"{output_dir} is not finalized: the run was interrupted. Rerun the same command to resume.")
    if not allow_partial:
        verify_checksums(output_dir, [SCORES_FILE])
    return np.load(output_dir / SCORES_FILE)
