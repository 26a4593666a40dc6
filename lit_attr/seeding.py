"""Every random draw of the method comes from here.

A draw is keyed by ``(seed, example_index, stream)``, so the draws an example gets do not depend
on the batch size, the data-loader worker, or the number of devices. ``stream`` separates the
purposes (training-gradient draws, query draws, curvature draws, MC-Fisher targets, ...).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def stream_id(stream: str) -> int:
    """Stable integer id of a stream name (CRC32, identical across processes and runs)."""
    return zlib.crc32(stream.encode("utf-8"))


def seed_for(seed: int, example_index: int, stream: str) -> int:
    """A 63-bit seed derived from ``(seed, example_index, stream)`` with numpy's SeedSequence."""
    if seed < 0 or example_index < 0:
        raise ValueError(f"seed and example_index must be non-negative, got {seed}, {example_index}.")
    state = np.random.SeedSequence([int(seed), int(example_index), stream_id(stream)])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator_for(seed: int, example_index: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded for one example and one stream."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed_for(seed, example_index, stream))
    return generator


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser applied elementwise to uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = values + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keyed_seeds(seed: int, keys: np.ndarray | list[int], stream: str) -> np.ndarray:
    """63-bit seeds of many keys at once: the same key gets the same seed whatever else is in ``keys``.

    Vectorised twin of ``seed_for`` for per-epoch work over a whole dataset (``keys``: stable example
    indices, shape (N,)); returns int64 of shape (N,).
    """
    keys = np.asarray(keys, dtype=np.int64)
    if seed < 0 or (keys < 0).any():
        raise ValueError(f"seed and keys must be non-negative, got seed {seed}.")
    base = _splitmix64(np.asarray([seed_for(seed, 0, stream)], dtype=np.uint64))
    return (_splitmix64(base ^ keys.astype(np.uint64)) >> np.uint64(1)).astype(np.int64)
