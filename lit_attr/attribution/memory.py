"""Memory estimate of an attribution run, printed before any work and checked against the device.

With D = the number of K-FAC'd parameters (``sum_layers out (in+1)``), Q queries, B training
examples per batch with S draws each, and ``a`` the bytes of all layer outputs of one row (one
image, one timestep; measured with one forward pass), the run holds at once

    queries       Q D b_q                      (b_q = 1 int8, 2 fp16, 4 none)
                  + Q D 4 for int8/fp16 when that float32 copy fits --model.float_query_cache_mib
    curvature     sum_layers ((in+1)^2 + out^2) * 24    (float64 sums + eigh + float32 eigenbasis)

plus the largest of its steps (float32 gradient matrices are kept three times: per layer,
flattened, preconditioned or scored; autograd keeps about two copies of the activations):

    query block   q D 4 * 3 + q S_m a * 2      (q = --model.query_batch_size, S_m measurement draws)
    scoring batch B D 4 * 3 + B S a * 2
    curvature     B S_c a * 2                  (S_c curvature draws)

TRAK and D-TRAK hold no curvature but their random projection matrix, d_proj D 4 bytes while it fits the
projector's cache (``lit_attr.baselines.projection``).

The estimate is approximate: on the digits model (8 queries, batch 64, S = 32, 256 rows) it says 1.2 GB
and the peak RSS grew by 1.0 GB over the 1.0 GB the process holds after loading. The run is refused
only when the estimate exceeds the device's free memory, with a ``--data.batch_size`` that fits.
``LIT_ATTR_MEMORY_LIMIT`` (e.g. ``8GB``) caps the memory the check may plan for.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lit_attr.attribution.quantize import float_copy_bytes
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError, ResourceError

MEMORY_LIMIT_ENV = "LIT_ATTR_MEMORY_LIMIT"
QUERY_BYTES = {"int8": 1, "fp16": 2, "none": 4}
GRADIENT_COPIES = 3
ACTIVATION_COPIES = 2
CURVATURE_BYTES_PER_ENTRY = 24


@dataclass(frozen=True)
class RunShape:
    """The sizes that set the memory of a run (see the module docstring for the symbols)."""

    num_params: int
    activation_bytes_per_row: int
    curvature_entries: int
    num_queries: int
    query_batch_size: int
    measurement_draws: int
    batch_size: int
    num_draws: int
    curvature_draws: int
    query_compression: str
    projection_bytes: int = 0
    """TRAK / D-TRAK: the random projection matrix kept for the whole run (0 for K-FAC influence)."""
    float_query_cache_bytes: int = 0
    """The most bytes a float32 copy of the query store may take (``quantize.with_float_copy``; 0: none)."""

    @property
    def query_float_copy(self) -> int:
        """Bytes of the float32 copy of the query store the run keeps (0 when it does not fit the budget)."""
        size = float_copy_bytes(self.num_queries, self.num_params, self.query_compression)
        return size if size <= self.float_query_cache_bytes else 0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held by the stored queries, the curvature and the largest step of the run."""

    queries: int
    curvature: int
    query_block: int
    scoring_batch: int
    curvature_batch: int
    projection: int = 0

    @property
    def resident(self) -> int:
        """Bytes held for the whole run: the stored queries, the curvature and a projection matrix."""
        return self.queries + self.curvature + self.projection

    @property
    def total(self) -> int:
        return self.resident + max(self.query_block, self.scoring_batch, self.curvature_batch)

    def summary(self, shape: RunShape) -> str:
        copy = " + float32 copy" if shape.query_float_copy else ""
        return (f"queries {human(self.queries)} ({shape.num_queries} x {shape.num_params:,} {shape.query_compression}"
                f"{copy}), "
                f"curvature {human(self.curvature)}, query block {human(self.query_block)}, scoring batch "
                f"{human(self.scoring_batch)} ({shape.batch_size} examples x {shape.num_draws} draws), curvature "
                f"batch {human(self.curvature_batch)}"
                + (f", projection matrix {human(self.projection)}" if self.projection else "")
                + f": about {human(self.total)} in all")


def estimate_memory(shape: RunShape) -> MemoryEstimate:
    """The estimate of the module docstring for ``shape``."""
    a, d = shape.activation_bytes_per_row, shape.num_params
    block = min(shape.query_batch_size, shape.num_queries)
    return MemoryEstimate(
        queries=shape.num_queries * d * QUERY_BYTES[shape.query_compression] + shape.query_float_copy,
        curvature=shape.curvature_entries * CURVATURE_BYTES_PER_ENTRY,
        query_block=block * (d * 4 * GRADIENT_COPIES + shape.measurement_draws * a * ACTIVATION_COPIES),
        scoring_batch=_batch_bytes(shape, shape.batch_size),
        curvature_batch=shape.batch_size * shape.curvature_draws * a * ACTIVATION_COPIES,
        projection=shape.projection_bytes,
    )


def _batch_bytes(shape: RunShape, batch_size: int) -> int:
    return batch_size * (shape.num_params * 4 * GRADIENT_COPIES + shape.num_draws * shape.activation_bytes_per_row
                         * ACTIVATION_COPIES)


def largest_fitting_batch_size(shape: RunShape, available: int) -> int:
    """The largest ``--data.batch_size`` whose estimate fits in ``available`` bytes (0 if none)."""
    fixed = estimate_memory(shape)
    room = available - fixed.resident
    if room <= fixed.query_block:
        return 0
    per_example = max(_batch_bytes(shape, 1), shape.curvature_draws * shape.activation_bytes_per_row * ACTIVATION_COPIES)
    return int(room // per_example)


def check_memory(shape: RunShape, device: torch.device) -> str:
    """A one-line estimate for the log; raises ``ResourceError`` if the run cannot fit on ``device``."""
    estimate = estimate_memory(shape)
    available = available_memory(device)
    line = f"Memory estimate on {device}: {estimate.summary(shape)}"
    if available is None:
        return line + "."
    if estimate.total > available:
        fits = largest_fitting_batch_size(shape, available)
        fix = (f"use --data.batch_size {fits}" if 0 < fits < shape.batch_size else
               "use fewer queries per run, a smaller --model.query_batch_size or --model.query_compression int8")
        if shape.query_float_copy and not 0 < fits < shape.batch_size:
            fix += " (or --model.float_query_cache_mib 0: no float32 copy of the queries)"
        raise ResourceError(f"attribution needs about {human(estimate.total)} but {device} has {human(available)} "
                            f"free ({estimate.summary(shape)}); {fix}.")
    return f"{line} of {human(available)} free."


def available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: MemAvailable), capped by ``LIT_ATTR_MEMORY_LIMIT``.

    What earlier passes of the same process freed is given back first (cyclic garbage collected, glibc's free heap
    trimmed, CUDA's cached blocks released), so a benchmark that scores many methods or ensemble members in one
    process is not refused for memory it no longer uses."""
    gc.collect()
    release_free_heap()
    free: int | None = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info(device)[0]
    elif device.type == "cpu":
        free = _meminfo_available()
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        capped = parse_bytes(limit)
        free = capped if free is None else min(free, capped)
    return free


def release_free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``); False where there is no glibc.

    After the first large free glibc raises its mmap threshold, so the next pass's 16 MB tensors (e.g. a projection
    matrix's chunks) come from the heap and stay counted as used after they are freed: 2.7 GB of them left
    MemAvailable 2.2 GB lower until trimmed."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # musl and other C libraries: nothing to trim
        return None


def _meminfo_available() -> int | None:
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():
        return None
    match = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo.read_text(), flags=re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def parse_bytes(text: str) -> int:
    """``"512MB"``, ``"8GB"``, ``"1.5GiB"`` or a plain number of bytes."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not match:
        raise ConfigError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size; use e.g. 512MB or 8GB.")
    scale = 1024 ** "BKMGT".index(match.group(2).upper() or "B")
    return int(float(match.group(1)) * scale)


def human(num_bytes: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TB"


def activation_bytes_per_row(unet: nn.Module, image_shape: tuple[int, ...], device: torch.device) -> int:
    """Bytes of all leaf-module outputs of one forward pass of one input of shape ``image_shape`` (the U-Net's: latent
    for a latent model), measured without autograd."""
    total = 0

    def count(module: nn.Module, inputs: object, output: object) -> None:
        nonlocal total
        outputs = output if isinstance(output, tuple) else (output,)
        total += sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in unet.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            zero = torch.zeros(1, dtype=torch.long, device=device)  # timestep 0 (and class 0 if class-conditional)
            unet_eps_model(unet)(torch.zeros(1, *image_shape, device=device), zero, zero)
    finally:
        for handle in handles:
            handle.remove()
    return total
