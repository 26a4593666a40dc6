"""Linear Datamodelling Score (LDS) and the noise diagnostics of an LDS benchmark.

Mlodozeniec et al., "Influence Functions for Scalable Data Attribution in Diffusion Models",
section 4, eq. (13), after Park et al. (2023), TRAK. For query x_q and subsets D_1..D_M::

    LDS_q = spearman( [tau(D, D_i, x_q)]_{i=1..M} ; [(1/K) sum_k m(theta*_k(D_i), x_q)]_{i=1..M} )

Sign. Scores follow the repo convention (``lit_attr.attribution.influence``): score[j, q] > 0 means
removing training example j is predicted to *increase* m(x_q). Training on D_i removes its complement,
so the predicted measurement of the model trained on D_i is, up to a constant shared by all subsets,

    tau(D, D_i, x_q) = m(theta*(D), x_q) + (1/N) sum_{j not in D_i} score[j, q]            (eq. 5, 6)

and the predictions are ``(~subset_masks) @ scores / N``. The 1/N and the constant m(theta*(D), x_q)
leave the Spearman correlation unchanged; the sign does not.

Spearman correlations use average ranks for ties, like ``scipy.stats.spearmanr``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lit_attr.errors import DataError

_MAX_COMPARISONS = 2**24
"""Bound on M * M * (queries per chunk) in ``average_ranks`` (bool entries)."""


def average_ranks(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """1-based ranks of each column of ``x`` (M, Q) among its ``valid`` entries, ties averaged.

    rank[i, q] = #{j valid: x[j, q] < x[i, q]} + (#{j valid: x[j, q] == x[i, q]} + 1) / 2, the average
    of the positions the tied values occupy (``scipy.stats.rankdata(method="average")``). Entries
    outside ``valid`` get rank 0.
    """
    valid = torch.ones_like(x, dtype=torch.bool) if valid is None else valid
    ranks = torch.zeros_like(x, dtype=torch.float64)
    chunk = max(1, _MAX_COMPARISONS // max(1, x.shape[0] ** 2))
    for lo in range(0, x.shape[1], chunk):
        xs, vs = x[:, lo:lo + chunk], valid[:, lo:lo + chunk]
        less = ((xs.unsqueeze(0) < xs.unsqueeze(1)) & vs.unsqueeze(0)).sum(1)  # [i, q]: count over j
        equal = ((xs.unsqueeze(0) == xs.unsqueeze(1)) & vs.unsqueeze(0)).sum(1)
        ranks[:, lo:lo + chunk] = (less + (equal + 1) / 2) * vs
    return ranks


def spearman_per_query(x: Tensor, y: Tensor, valid: Tensor | None = None) -> Tensor:
    """Spearman correlation of ``x`` and ``y`` (M, Q) down each column, over rows finite in both.

    Args:
        x: values of shape (M, Q), e.g. predicted changes per subset and query.
        y: values of shape (M, Q), e.g. ensemble-mean measurements.
        valid: optional (M, Q) bool mask of rows to use; non-finite rows are always left out.

    Returns:
        float64 (Q,): Pearson correlation of the average ranks; NaN where fewer than 2 rows are valid
        or a column is constant (as ``scipy.stats.spearmanr``).
    """
    if x.shape != y.shape or x.dim() != 2:
        raise DataError(f"Spearman needs two (M, Q) tensors of one shape; got {tuple(x.shape)}, {tuple(y.shape)}.")
    x, y = x.double(), y.double()
    use = x.isfinite() & y.isfinite() & (True if valid is None else valid.bool())
    rx, ry = average_ranks(x, use), average_ranks(y, use)
    count = use.sum(0)
    cx = (rx - rx.sum(0) / count.clamp(min=1)) * use
    cy = (ry - ry.sum(0) / count.clamp(min=1)) * use
    rho = (cx * cy).sum(0) / ((cx * cx).sum(0) * (cy * cy).sum(0)).sqrt()
    rho = rho.clamp(-1.0, 1.0)  # NaN (0/0) stays NaN
    return torch.where(count >= 2, rho, torch.full_like(rho, float("nan")))


def subsets_to_masks(subsets: list, num_train: int) -> Tensor:
    """Bool membership masks (M, num_train) from M arrays of positions (``read_subsets``)."""
    masks = torch.zeros(len(subsets), num_train, dtype=torch.bool)
    for i, positions in enumerate(subsets):
        masks[i, torch.as_tensor(positions, dtype=torch.long)] = True
    return masks


def predicted_changes(scores: Tensor, subset_masks: Tensor) -> Tensor:
    """Predicted change of each query's measurement when training on each subset instead of D.

    Args:
        scores: (num_train, num_queries), positive = removal increases the measurement.
        subset_masks: bool (num_subsets, num_train), True for the examples kept in D_i.

    Returns:
        float64 (num_subsets, num_queries): ``(1/N) sum_{j not in D_i} score[j, q]`` (module docstring).
    """
    if scores.dim() != 2 or subset_masks.shape != (subset_masks.shape[0], scores.shape[0]):
        raise DataError(f"scores must be (num_train, num_queries) and subset_masks (num_subsets, num_train); "
                        f"got {tuple(scores.shape)} and {tuple(subset_masks.shape)}.")
    removed = (~subset_masks.bool()).to(scores.device).double()
    return removed @ scores.double() / scores.shape[0]


def ensemble_targets(measurements: Tensor) -> Tensor:
    """Mean measurement over the available seeds, (num_subsets, num_seeds, Q) -> (num_subsets, Q).

    NaN marks a missing seed; a subset with no seed at all gets NaN (and is left out of the LDS).
    """
    if measurements.dim() == 2:
        measurements = measurements.unsqueeze(1)
    if measurements.dim() != 3:
        raise DataError(f"measurements must be (num_subsets, num_seeds, num_queries); got {tuple(measurements.shape)}.")
    return measurements.double().nanmean(dim=1)


def subset_resamples(num_subsets: int, num_resamples: int = 200, seed: int = 0) -> Tensor:
    """(B, M) positions of M subsets drawn with replacement, B times: a seeded bootstrap over the subsets.

    Every method of a benchmark is resampled with the same rows, so differences between methods are paired.
    """
    if num_subsets < 2 or num_resamples < 2:
        raise DataError(f"A bootstrap over subsets needs >= 2 subsets and >= 2 resamples; got {num_subsets} and "
                        f"{num_resamples}.")
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_subsets, (num_resamples, num_subsets), generator=generator)


def subset_bootstrap(scores: Tensor, subset_masks: Tensor, measurements: Tensor, resamples: Tensor) -> Tensor:
    """The LDS (mean over queries) on each bootstrap resample of the subsets: (B,).

    All queries are scored against the same M subsets, so a subset-level effect common to every query (e.g. how
    well that subset's models trained overall) moves all per-query LDS together; the s.e. over queries does
    not see it. The standard deviation of these values does: it is the LDS's uncertainty from the draw of
    the subsets (eq. 13 with D_1..D_M resampled), holding the queries fixed.

    Args:
        scores: (num_train, num_queries); subset_masks: bool (M, num_train); measurements: (M, K, Q) or (M, Q).
        resamples: (B, M) subset positions (``subset_resamples``).
    """
    predictions = predicted_changes(scores, subset_masks)
    targets = ensemble_targets(measurements).to(predictions)
    values = [spearman_per_query(predictions[rows], targets[rows]) for rows in resamples]
    return torch.stack([v[v.isfinite()].mean() if v.isfinite().any() else v.new_tensor(float("nan"))
                        for v in values])


def mean_and_stderr(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error ``std(ddof=1) / sqrt(n)`` over the finite entries of ``values``."""
    finite = values[values.isfinite()].double()
    if finite.numel() == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    stderr = finite.std(correction=1) / finite.numel() ** 0.5 if finite.numel() > 1 else torch.tensor(float("nan"))
    return finite.mean(), stderr.double()


class LinearDatamodelingScore(Metric):
    """LDS of eq. (13): per query, Spearman correlation of predicted and retrained measurements.

    Each ``update`` computes the LDS of its queries at once (all subsets are needed per query), so the
    state is the list of per-query values (``dist_reduce_fx="cat"``); ranks may hold different queries.
    ``compute`` returns ``lds_per_query`` (Q,) (sorted by ``query_index`` when every update gave one),
    its ``mean`` and ``stderr`` (std with ddof=1 over sqrt(Q), over queries with a finite LDS), and
    ``num_queries`` (finite ones).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("lds", default=[], dist_reduce_fx="cat")
        self.add_state("query_index", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, subset_masks: Tensor, measurements: Tensor,
               query_index: Tensor | None = None) -> None:
        """Add the LDS of a block of queries.

        Args:
            scores: (num_train, num_queries) influence scores of this block's queries.
            subset_masks: bool (num_subsets, num_train), True for examples kept in D_i.
            measurements: (num_subsets, num_seeds, num_queries) measurements of the retrained models,
                NaN for a missing seed; (num_subsets, num_queries) for one seed.
            query_index: optional (num_queries,) global query ids, so ``compute`` can order the result.
        """
        targets = ensemble_targets(measurements).to(self.device)
        predictions = predicted_changes(scores.to(self.device), subset_masks)
        if targets.shape != predictions.shape:
            raise DataError(f"measurements give targets of shape {tuple(targets.shape)} but scores and masks give "
                            f"predictions of shape {tuple(predictions.shape)}; both must be "
                            "(num_subsets, num_queries).")
        ids = torch.full((scores.shape[1],), -1.0) if query_index is None else query_index.double()
        self.lds.append(spearman_per_query(predictions, targets).to(self.device, self.dtype))
        self.query_index.append(ids.to(self.device, self.dtype))

    def compute(self) -> dict[str, Tensor]:
        """``{"lds_per_query", "mean", "stderr", "num_queries"}`` (see the class docstring)."""
        lds = dim_zero_cat(self.lds) if len(self.lds) else torch.zeros(0, dtype=self.dtype, device=self.device)
        ids = dim_zero_cat(self.query_index) if len(self.query_index) else torch.zeros_like(lds)
        if ids.numel() and (ids >= 0).all():
            lds = lds[ids.argsort(stable=True)]
        mean, stderr = mean_and_stderr(lds)
        return {"lds_per_query": lds, "mean": mean.to(lds), "stderr": stderr.to(lds),
                "num_queries": lds.isfinite().sum()}


def exact_retraining_lds(measurements: Tensor) -> Tensor:
    """LDS of the "Exact Retraining" oracle (section 4): seed 0 predicts the mean of the other seeds.

    Args:
        measurements: (num_subsets, num_seeds >= 2, num_queries), NaN for missing seeds.

    Returns:
        float64 (num_queries,): Spearman over the subsets where seed 0 and at least one other seed exist.
    """
    if measurements.dim() != 3 or measurements.shape[1] < 2:
        raise DataError("The oracle needs measurements of shape (num_subsets, num_seeds >= 2, num_queries); "
                        f"got {tuple(measurements.shape)}.")
    return spearman_per_query(measurements[:, 0], ensemble_targets(measurements[:, 1:]))


def seed_reliability(measurements: Tensor, seed_a: int = 0, seed_b: int = 1) -> Tensor:
    """Spearman correlation across subsets between two seeds' measurements, per query, (Q,).

    Low values mean the retraining noise bounds any attainable LDS.
    """
    if measurements.dim() != 3:
        raise DataError(f"measurements must be (num_subsets, num_seeds, num_queries); got {tuple(measurements.shape)}.")
    if not (0 <= seed_a < measurements.shape[1] and 0 <= seed_b < measurements.shape[1]):
        raise DataError(f"seed_a={seed_a} and seed_b={seed_b} must be below num_seeds={measurements.shape[1]}.")
    return spearman_per_query(measurements[:, seed_a], measurements[:, seed_b])


def split_half_reliability(scores_a: Tensor, scores_b: Tensor, subset_masks: Tensor) -> Tensor:
    """Spearman correlation across subsets between the predictions of two independent score estimates.

    Args:
        scores_a: (num_train, num_queries) scores from one half of the Monte-Carlo draws.
        scores_b: the same from the other, independent half.
        subset_masks: bool (num_subsets, num_train).

    Returns:
        float64 (num_queries,); low values mean the MC noise of the scores bounds the LDS.
    """
    return spearman_per_query(predicted_changes(scores_a, subset_masks), predicted_changes(scores_b, subset_masks))
