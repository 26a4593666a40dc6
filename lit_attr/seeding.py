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
