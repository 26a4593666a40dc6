"""Retraining without top influences (section 4, App. G.6 of Mlodozeniec et al., "Influence Functions
for Scalable Data Attribution in Diffusion Models").

For each query x_q, remove the ``fraction`` of training examples with the largest *positive* scores
(those that made x_q most probable; with the repo sign convention their removal is predicted to raise
the loss-like measurement), retrain with the full model's procedure and number of steps, and report

    relative change = (m(theta*(D \\ I_q), x_q) - m(theta*(D), x_q)) / |m(theta*(D), x_q)|

averaged over queries with its standard error; a random removal of the same size is the control.
Use one metric instance per removal fraction.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_attr.errors import ConfigError, DataError
from lit_attr.metrics.lds import mean_and_stderr

log = logging.getLogger(__name__)


def removal_count(num_train: int, fraction: float) -> int:
    """``round(fraction * num_train)``; ConfigError unless it is in ``[1, num_train - 1]``."""
    count = round(fraction * num_train)
    if not 0 < fraction < 1 or not 1 <= count < num_train:
        raise ConfigError(f"Removing fraction={fraction} of num_train={num_train} examples removes {count}; "
                          "choose 0 < fraction < 1 that removes at least one example and keeps at least one.")
    return count


def top_influence_removal(scores: Tensor, fraction: float, query: int, positive_only: bool = True) -> Tensor:
    """Positions of the ``round(fraction * N)`` training examples with the largest scores for one query.

    Args:
        scores: (num_train, num_queries); positive = removal increases the query's measurement.
        fraction: share of the training set to remove (e.g. 0.02, 0.1).
        query: column of ``scores``.
        positive_only: drop non-positive scores from the selection (fewer than requested are then
            removed, with a warning), since removing them is not predicted to raise the measurement.

    Returns:
        int64 (num_removed,) positions (score rows), by decreasing score; ties keep the lower position first.
    """
    if scores.dim() != 2 or not 0 <= query < scores.shape[1]:
        raise DataError(f"scores must be (num_train, num_queries) with 0 <= query < num_queries; "
                        f"got shape {tuple(scores.shape)} and query={query}.")
    count = removal_count(scores.shape[0], fraction)
    column = scores[:, query]
    order = torch.argsort(-column, stable=True)[:count]
    if positive_only:
        kept = order[column[order] > 0]
        if len(kept) < count:
            log.warning("Query %d has only %d positive scores; removing those instead of %d.", query, len(kept), count)
        order = kept
    return order.long()


def random_removal(num_train: int, fraction: float, seed: int) -> Tensor:
    """The control: ``round(fraction * num_train)`` distinct positions drawn uniformly, sorted, int64."""
    count = removal_count(num_train, fraction)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    return torch.from_numpy(np.sort(rng.choice(num_train, size=count, replace=False)).astype(np.int64))


def remaining_positions(num_train: int, removed: Tensor) -> Tensor:
    """Sorted positions of ``[0, num_train)`` not in ``removed`` (the retraining set), int64."""
    keep = torch.ones(num_train, dtype=torch.bool)
    keep[removed.long()] = False
    return keep.nonzero().flatten()


def relative_change(full: Tensor, retrained: Tensor) -> Tensor:
    """``(retrained - full) / |full|`` elementwise, float64."""
    return (retrained.double() - full.double()) / full.double().abs()


class RetrainingWithoutTopInfluences(Metric):
    """Mean and standard error over queries of the relative change after removing top influences.

    ``compute`` returns ``mean``, ``stderr`` (std with ddof=1 over sqrt(Q)), ``control_mean``,
    ``control_stderr`` (NaN without controls) and the per-query ``relative_change`` and
    ``control_relative_change`` (NaN where no control was given). A positive mean means the
    removal raised the loss-like measurement: the method found examples that supported the query.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("change", default=[], dist_reduce_fx="cat")
        self.add_state("control_change", default=[], dist_reduce_fx="cat")

    def update(self, full_measurement: Tensor, retrained_measurement: Tensor,
               control_measurement: Tensor | None = None) -> None:
        """Add queries.

        Args:
            full_measurement: (Q,) measurement by the model trained on the full dataset.
            retrained_measurement: (Q,) by the model retrained without the query's top influences.
            control_measurement: optional (Q,) by the model retrained without a random subset of the
                same size (the control); NaN is stored where it is not given.
        """
        nan = torch.full_like(full_measurement, float("nan"))
        control = nan if control_measurement is None else control_measurement
        shapes = [tuple(t.shape) for t in (full_measurement, retrained_measurement, control)]
        if full_measurement.dim() != 1 or len(set(shapes)) != 1:
            raise DataError(f"full, retrained and control measurements must all have shape (Q,); got {shapes}.")
        self.change.append(relative_change(full_measurement, retrained_measurement).to(self.device, self.dtype))
        self.control_change.append(relative_change(full_measurement, control).to(self.device, self.dtype))

    def compute(self) -> dict[str, Tensor]:
        """The dict described in the class docstring."""
        change, control = (dim_zero_cat(s) if len(s) else torch.zeros(0, dtype=self.dtype, device=self.device)
                           for s in (self.change, self.control_change))
        mean, stderr = mean_and_stderr(change)
        control_mean, control_stderr = mean_and_stderr(control)
        return {"mean": mean.to(change), "stderr": stderr.to(change), "control_mean": control_mean.to(change),
                "control_stderr": control_stderr.to(change), "relative_change": change,
                "control_relative_change": control}
