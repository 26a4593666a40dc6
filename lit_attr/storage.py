"""``ScoreStore``: the memory-mapped score matrix of one attribution run, resumable and atomic.

Layout of an output folder::

    scores.npy        float32 (or float16) memmap, shape (num_train, num_queries): row j holds the
                      influence of training example j on every query
    scores_done.npy   uint8 (num_train,): 1 once row j is written
    metadata.json     arguments, dataset size/index hash, model hash; "finalized": true is
                      written last (temporary file + os.replace), so a killed run never looks complete

Each rank writes disjoint rows (its own training examples), so several processes can write the
same files without locks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lit_attr.constants import DONE_MASK_FILE, FINALIZED_KEY, METADATA_FILE, SCORES_FILE, VOLATILE_METADATA_KEYS
from lit_attr.errors import StoreMismatchError


def write_json_atomic(path: str | Path, payload: dict[str, Any]) -> None:
    """Write JSON through a temporary file and ``os.replace`` so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


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
        """Whether the folder already holds a run with this metadata (read-only; safe on every rank).

        Raises:
            StoreMismatchError: the folder holds a run with other settings and ``overwrite`` is False.
        """
        if not self.metadata_path.exists():
            return False
        differences = metadata_differences(read_json(self.metadata_path), self.metadata)
        if differences and not overwrite:
            listed = "; ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in differences.items())
            raise StoreMismatchError(
                f"{self.output_dir} holds scores computed with other settings ({listed}). "
                "Use a new --output_dir, or pass --overwrite true to discard them."
            )
        return not differences

    def prepare(self, overwrite: bool = False) -> None:
        """Create the files, or keep existing ones made with the same metadata (rank 0 only).

        Raises:
            StoreMismatchError: the folder holds a run with other settings and ``overwrite`` is False.
        """
        if self.check(overwrite):
            return
        self._remove_files()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(self.output_dir / SCORES_FILE, mode="w+", dtype=self.dtype,
                                  shape=(self.num_train, self.num_queries)).flush()
        np.lib.format.open_memmap(self.output_dir / DONE_MASK_FILE, mode="w+", dtype=np.uint8,
                                  shape=(self.num_train,)).flush()
        write_json_atomic(self.metadata_path, {**self.metadata, FINALIZED_KEY: False, "created": time.time()})

    def _remove_files(self) -> None:
        for name in (SCORES_FILE, DONE_MASK_FILE, METADATA_FILE):
            (self.output_dir / name).unlink(missing_ok=True)

    def open(self) -> None:
        """Open the memmaps for reading and writing (every rank, after ``prepare``)."""
        self._scores = np.load(self.output_dir / SCORES_FILE, mmap_mode="r+")
        self._done = np.load(self.output_dir / DONE_MASK_FILE, mmap_mode="r+")

    def is_finalized(self) -> bool:
        return self.metadata_path.exists() and bool(read_json(self.metadata_path).get(FINALIZED_KEY))

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
        stored = read_json(self.metadata_path)
        write_json_atomic(self.metadata_path, {**stored, **(extra or {}), FINALIZED_KEY: True, "finished": time.time()})


def load_scores(output_dir: str | Path, allow_partial: bool = False) -> np.ndarray:
    """The score matrix (num_train, num_queries) of a finished run.

    Positive score: removing that training example is predicted to increase the query's
    measurement (its loss), i.e. the example made the query more probable.
    """
    output_dir = Path(output_dir)
    meta_path = output_dir / METADATA_FILE
    if not meta_path.exists():
        raise FileNotFoundError(f"No attribution run in {output_dir} (missing {METADATA_FILE}).")
    if not allow_partial and not read_json(meta_path).get(FINALIZED_KEY):
        raise RuntimeError(f"{output_dir} is not finalized: the run was interrupted. Rerun the same command to resume.")
    return np.load(output_dir / SCORES_FILE)


def remove_run(output_dir: str | Path) -> None:
    """Delete an output folder (used by ``--overwrite``)."""
    shutil.rmtree(output_dir, ignore_errors=True)
