"""Damping chosen without the evaluation subsets: two-fold cross-fitting over the LDS subsets.

Reporting each method at the damping that maximises its LDS on the very subsets the LDS is measured
on flatters methods whose damping matters (TRAK collapses at small damping, K-FAC does not). Here the
M subsets are split into two folds (even and odd positions; the subsets are i.i.d., so any fixed
split is a random one). For fold f the damping with the best mean LDS on fold f is chosen and the
per-query LDS of that damping is read on the *other* fold; a query's cross-fitted LDS is the mean of
its two held-out values::

    d_f = argmax_d mean_q LDS_q(d; subsets of fold f)
    LDS_q^cf = 1/2 sum_f LDS_q(d_f; subsets of fold 1 - f)

so no subset that scores a method was used to choose its damping. Methods without a sweep get the
same two held-out halves, so every method's cross-fitted number is computed alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from lit_attr.evaluation.rows import CrossFitted, Stat

NUM_FOLDS = 2


def fold_masks(num_subsets: int) -> list[Tensor]:
    """Bool (M,) masks of the two folds: subsets at even and at odd positions."""
    positions = torch.arange(num_subsets)
    return [positions % NUM_FOLDS == f for f in range(NUM_FOLDS)]


class FoldedLDS(Protocol):
    """An LDS at one damping with its per-query LDS on each fold (``lit_attr.evaluation.rows.LDSRow``)."""

    damping: float
    folds: list[list[float]]


def cross_fitted(rows: Sequence[FoldedLDS]) -> CrossFitted:
    """Cross-fitted LDS of one method, S, target and approximating measurement over its damping sweep.

    Args:
        rows: LDS rows that differ only in ``damping``, each with ``folds``: one per-query LDS list per
            fold (``lit_attr.evaluation.results``).

    Returns:
        mean, s.e. and per-query cross-fitted LDS, and ``dampings`` = [d_0, d_1] (chosen on each fold).
    """
    held_out, chosen = [], []
    for fold in range(NUM_FOLDS):
        pick = max(rows, key=lambda r: _nanmean(r.folds[fold]))
        chosen.append(pick.damping)
        held_out.append(torch.tensor(pick.folds[NUM_FOLDS - 1 - fold], dtype=torch.float64))
    per_query = torch.stack(held_out).mean(dim=0)
    stat = Stat.of(per_query)
    return CrossFitted(stat.mean, stat.stderr, per_query.tolist(), chosen)


def _nanmean(values: list[float]) -> float:
    tensor = torch.tensor(values, dtype=torch.float64)
    finite = tensor[tensor.isfinite()]
    return float(finite.mean()) if len(finite) else float("-inf")
