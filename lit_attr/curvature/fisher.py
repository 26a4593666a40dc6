"""Which GGN estimate K-FAC's G factor approximates, and the vectors v backpropagated to get it.

The output-side vectors v of ``lit_attr.curvature.kfac`` (paper eqs. 10-11): ``E[v v^T] = (2/D) I``, the
Hessian of the pixel-mean loss w.r.t. the model output f (D = C H W):

- ``FisherType.MC`` (eq. 10): ``v = sqrt(2/D) xi``, ``xi ~ N(0, I)`` seeded per example;
- ``FisherType.TYPE2``: exact, D backward passes with ``v = sqrt(2/D) e_d``;
- ``FisherType.EMPIRICAL`` (eq. 11): ``v = dl/df = (2/D)(f - eps)`` with the true noise.

See the docstring of ``lit_attr.curvature.kfac`` for the derivation and the relation to curvlinops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from enum import Enum
from typing import Literal

import torch
from torch import Tensor

from lit_attr.errors import ConfigError
from lit_attr.seeding import generator_for

MC_TARGET_STREAM = "mc_targets"
"""Stream of the MC-Fisher target noise xi."""


class FisherType(str, Enum):
    """Which GGN estimate K-FAC approximates (see the module docstring)."""

    MC = "mc"
    EMPIRICAL = "empirical"
    TYPE2 = "type-2"


FisherTypeName = Literal["mc", "empirical", "type-2"]
"""``FisherType``'s values, for signatures read by the CLIs."""


def num_backprop_vectors(fisher_type: FisherType | str, output_dim: int, mc_samples: int = 1) -> int:
    """Backward passes per batch: D (type-2), ``mc_samples`` (MC) or 1 (empirical)."""
    fisher_type = FisherType(fisher_type)
    return {FisherType.TYPE2: output_dim, FisherType.MC: mc_samples, FisherType.EMPIRICAL: 1}[fisher_type]


def mc_target_noise(
    example_indices: Tensor, rows_per_example: int, mc_samples: int, sample_shape: tuple[int, ...], seed: int,
    stream: str = MC_TARGET_STREAM, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Per-example seeded ``xi ~ N(0, I)``: shape (mc_samples, R, *sample_shape).

    Example i draws (S, mc_samples, *sample_shape) in float32 from ``generator_for(seed, i, stream)``,
    so the targets of a row depend neither on the batch it is in nor on the model's dtype.
    """
    shape = (rows_per_example, mc_samples, *sample_shape)
    draws = [torch.randn(shape, generator=generator_for(seed, int(i), stream)) for i in example_indices.tolist()]
    return torch.stack(draws).flatten(0, 1).transpose(0, 1).to(dtype)


def backprop_vectors(
    fisher_type: FisherType | str, output: Tensor, example_indices: Tensor, targets: Tensor | None = None,
    mc_samples: int = 1, seed: int = 0, stream: str = MC_TARGET_STREAM,
) -> Iterator[Tensor]:
    """The vectors v backpropagated from the output, each of the output's shape (R, ...).

    ``E[v v^T] = (2/D) I`` (MC, type-2) or ``v = (2/D)(f - eps)`` (empirical); module docstring.
    """
    fisher_type = FisherType(fisher_type)
    num_rows, dim = output.shape[0], output[0].numel()
    scale = math.sqrt(2.0 / dim)
    if fisher_type is FisherType.TYPE2:
        for d in range(dim):
            v = output.new_zeros(num_rows, dim)
            v[:, d] = scale
            yield v.view_as(output)
    elif fisher_type is FisherType.MC:
        rows_per_example = _rows_per_example(num_rows, example_indices)
        sample_shape = tuple(output.shape[1:])
        xi = mc_target_noise(example_indices, rows_per_example, mc_samples, sample_shape, seed, stream, output.dtype)
        for m in range(mc_samples):
            yield scale * xi[m].to(output.device)
    else:
        if targets is None:
            raise ConfigError("fisher_type='empirical' needs the true noise: pass targets=(R, C, H, W).")
        yield (2.0 / dim) * (output.detach() - targets.to(output))


def _rows_per_example(num_rows: int, example_indices: Tensor) -> int:
    if num_rows % len(example_indices):
        raise ConfigError(f"{num_rows} rows cannot be split evenly over {len(example_indices)} example indices.")
    return num_rows // len(example_indices)
