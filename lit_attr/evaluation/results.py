"""The benchmark's numbers: LDS tables with noise diagnostics, the comparison table, removal results.

For every method, number of draws S, target measurement (what was retrained and measured), approximating
measurement (whose gradient the scores use; ``loss`` for an ``elbo`` target is the paper's m.-loss
substitution) and damping, the LDS of eq. (13) via ``LinearDatamodelingScore``. Noise diagnostics:

- ``oracle``: "exact retraining" LDS, seed 0 against the mean of the other seeds (subsets with >= 2 seeds);
- ``seed reliability``: Spearman across subsets between two seeds' measurements, mean over queries. Low
  values mean training noise, not the attribution method, bounds the LDS;
- ``measurement MC reliability``: the same between the two independent halves of the true-measurement
  draws of seed 0 (the MC noise left in the targets);
- ``split-half``: Spearman across subsets between the predictions of the two halves of the S draws of a
  method (the MC noise of the scores);
- ``subset s.e.``: the standard deviation of each LDS over ``SUBSET_RESAMPLES`` bootstrap resamples of the
  subsets (the same resamples for every method, so differences pair): the uncertainty from which M subsets
  were drawn, which the s.e. over queries leaves out (all queries share the subsets).

The report files (JSON, markdown, PNG, TensorBoard) are written by ``lit_attr.evaluation.report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lit_attr.constants import DONE_FILE
from lit_attr.evaluation.campaign import Benchmark
from lit_attr.evaluation.config import MethodConfig
from lit_attr.evaluation.rows import (
    NA,
    ComparisonRow,
    DampedStat,
    Diagnostics,
    DrawSetSpread,
    LDSRow,
    LDSValue,
    PairedDifference,
    RemovalRow,
    Results,
    Stat,
    SubstitutionTable,
)
from lit_attr.evaluation.selection import cross_fitted, fold_masks
from lit_attr.evaluation.subsets import read_subsets
from lit_attr.measurements import is_timestep_measurement
from lit_attr.methods.base import ScoreSet
from lit_attr.metrics.lds import (
    LinearDatamodelingScore,
    exact_retraining_lds,
    seed_reliability,
    spearman_per_query,
    split_half_reliability,
    subset_bootstrap,
    subset_resamples,
    subsets_to_masks,
)
from lit_attr.metrics.retraining import RetrainingWithoutTopInfluences

SUBSET_RESAMPLES = 200
"""Bootstrap resamples of the subsets behind every ``subset_se`` (seed 0: the same rows for every method)."""


def lds(scores: np.ndarray, masks: torch.Tensor, targets: torch.Tensor) -> LDSValue:
    """LDS (mean, s.e., per query) of (N, Q) scores against (M, K, Q) measurements, and ``folds``: the
    per-query LDS on each fold of the subsets (``lit_attr.evaluation.selection``)."""
    scores_t = torch.from_numpy(np.ascontiguousarray(scores)).double()
    out = _lds(scores_t, masks, targets)
    folds = [_lds(scores_t, masks[f], targets[f])["lds_per_query"] for f in fold_masks(len(masks))]
    return LDSValue(float(out["mean"]), float(out["stderr"]), [float(v) for v in out["lds_per_query"]],
                    [[float(v) for v in f] for f in folds])


def _lds(scores: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, targets)
    return metric.compute()


def draw_set_spread(draw_sets: list[np.ndarray], masks: torch.Tensor, targets: torch.Tensor) -> DrawSetSpread:
    """LDS of the (N, Q) scores of each disjoint set of training draws and their standard deviation: how far the
    benchmark's number moves when only the (timestep, noise) draws change (the queries' s.e. does not show it, as
    every query shares the training draws)."""
    values = [float(_lds(torch.from_numpy(np.ascontiguousarray(s)).double(), masks, targets)["mean"])
              for s in draw_sets]
    return DrawSetSpread(values, float(np.std(values, ddof=1)))


@dataclass
class BenchmarkOutcomes:
    """What the retraining stage produced, loaded once for the tables and the figures.

    Attributes:
        masks: bool (M, N), True where subset i keeps training example j.
        measured: float64 (M, K, 3, T, Q) true measurements (all draws, half 1, half 2), NaN where missing.
    """

    masks: torch.Tensor
    measured: torch.Tensor

    @classmethod
    def load(cls, bench: Benchmark) -> "BenchmarkOutcomes":
        return cls(subsets_to_masks(read_subsets(bench.root), bench.num_train), bench.lds_measurements())


def compute_results(bench: Benchmark, outcomes: BenchmarkOutcomes | None = None) -> Results:
    """Everything the report shows, from the finished stages of ``bench``."""
    cfg = bench.config
    outcomes = outcomes or BenchmarkOutcomes.load(bench)
    measured = outcomes.measured
    targets = list(cfg.true_measurements.measurements)
    have = ~measured[:, :, 0, 0, 0].isnan()
    two_seeds = int(have.all(1).sum()) if measured.shape[1] > 1 else 0
    rows, missing = [], []
    for method in cfg.methods:
        try:
            score_sets = bench.score_sets(method)
        except (FileNotFoundError, RuntimeError, KeyError):
            missing.append(method.name)  # not scored yet: `evaluate.py run` scores it
            continue
        for score_set in score_sets:
            rows += lds_rows(method, score_set, outcomes, targets)
    return Results(protocol=cfg.retraining.protocol, num_subsets=int(have[:, 0].sum()),
                   num_subsets_with_two_seeds=two_seeds, num_queries=cfg.queries.num_generated,
                   num_train=bench.num_train, diagnostics=diagnostics(measured, targets, two_seeds >= 3),
                   lds=rows, missing_methods=missing, comparison=comparison(rows, cfg.reference_method),
                   substitution=substitution_tables(rows), removal=removal_results(bench))


def diagnostics(measured: torch.Tensor, targets: list[str], with_seeds: bool) -> dict[str, Diagnostics]:
    """Per target: measurement MC reliability of seed 0, and (``with_seeds``) seed reliability and oracle LDS
    from the (M, K, 3, T, Q) ``measured`` values."""
    out = {}
    for t, target in enumerate(targets):
        mc = Stat.of(spearman_per_query(measured[:, 0, 1, t], measured[:, 0, 2, t]))
        if with_seeds:
            out[target] = Diagnostics(mc, Stat.of(seed_reliability(measured[:, :, 0, t])),
                                      Stat.of(exact_retraining_lds(measured[:, :, 0, t])))
        else:
            out[target] = Diagnostics(mc)
    return out


def lds_rows(method: MethodConfig, score_set: ScoreSet, outcomes: BenchmarkOutcomes,
             targets: list[str]) -> list[LDSRow]:
    """The LDS rows of one score set: per approximating measurement, damping and target."""
    masks, measured = outcomes.masks, outcomes.measured
    resamples = subset_resamples(len(masks), SUBSET_RESAMPLES) if len(masks) >= 2 else None
    rows = []
    for a, approx in enumerate(score_set.approx):
        for d, damping in enumerate(score_set.dampings):
            split = NA
            if score_set.half_a is not None:
                split = Stat.of(split_half_reliability(torch.from_numpy(score_set.half_a[:, a, d]).double(),
                                                       torch.from_numpy(score_set.half_b[:, a, d]).double(), masks))
            for t, target in enumerate(targets):
                value = lds(score_set.scores[:, a, d], masks, measured[:, :, 0, t])
                spread = None
                if score_set.draw_sets:
                    spread = draw_set_spread([s[:, a, d] for s in score_set.draw_sets], masks, measured[:, :, 0, t])
                replicates = None
                if resamples is not None:
                    replicates = subset_bootstrap(torch.from_numpy(np.ascontiguousarray(score_set.scores[:, a, d])),
                                                  masks, measured[:, :, 0, t], resamples)
                rows.append(LDSRow(method.name, method.kind, method.draw_scheme, score_set.draws, target, approx,
                                   damping, d == 0, split, value.mean, value.stderr, value.per_query, value.folds,
                                   spread, *_subset_spread(replicates)))
    return rows


def _subset_spread(replicates: torch.Tensor | None) -> tuple[float | None, tuple[float, ...] | None]:
    """``(subset_se, subset_replicates)`` of an LDS row from its bootstrap values (None without them)."""
    if replicates is None:
        return None, None
    return _sd(replicates), tuple(float(v) for v in replicates)


def _sd(values: torch.Tensor) -> float:
    finite = values[values.isfinite()]
    return float(finite.std(correction=1)) if len(finite) > 1 else float("nan")


def _held_out_replicates(sweep: list[LDSRow], dampings: list[float]) -> torch.Tensor | None:
    """Bootstrap values of a cross-fitted LDS: the mean of the replicates of the rows at the dampings the two
    folds chose (an approximation: the choice itself is not redone per resample)."""
    chosen = [next(r for r in sweep if r.damping == d) for d in dampings]
    if any(r.subset_replicates is None for r in chosen):
        return None
    return torch.tensor([r.subset_replicates for r in chosen], dtype=torch.float64).mean(dim=0)


def substitution_tables(rows: list[LDSRow]) -> list[SubstitutionTable]:
    """The measurement-substitution tables (like the paper's Fig. 11), one per method scored with per-timestep
    measurements: LDS of every target (retrained and measured) when the scores use the gradient of each
    approximating measurement, at the method's most draws and default damping."""
    tables = []
    for method in dict.fromkeys(r.method for r in rows):
        own = [r for r in rows if r.method == method and r.default_damping]
        if not any(is_timestep_measurement(r.approx) for r in own):
            continue
        draws = max(r.num_draws for r in own)
        own = [r for r in own if r.num_draws == draws]
        approx = list(dict.fromkeys(r.approx for r in own))
        targets = list(dict.fromkeys(r.target for r in own))
        cell = {(r.approx, r.target): r for r in own}
        tables.append(SubstitutionTable(method, draws, own[0].damping, approx, targets,
                                        [[cell[a, t].mean for t in targets] for a in approx],
                                        [[cell[a, t].stderr for t in targets] for a in approx]))
    return tables


def removal_results(bench: Benchmark) -> list[RemovalRow]:
    """Per method and fraction: relative change of the measurement after removing each query's top influences,
    the random control, and the paired per-query difference to the first removal method (``vs_reference``)."""
    rem = bench.config.removal
    runs = {(method, q, fraction): bench.layout.removal_run_dir(method, q, fraction)
            for method in rem.methods for fraction in rem.fractions for q in [*rem.queries, -1]}
    if not rem.queries or not all((run_dir / DONE_FILE).exists() for run_dir in runs.values()):
        return []
    t = list(bench.config.true_measurements.measurements).index(rem.measurement)
    full = bench.full_measurements()[0, t]
    queries = torch.tensor(rem.queries)
    measured = {key: bench.run_measurements(run_dir)[0, t] for key, run_dir in runs.items()}
    out = []
    for fraction in rem.fractions:
        reference = None
        for method in rem.methods:
            metric = RetrainingWithoutTopInfluences()
            removed = torch.stack([measured[method, q, fraction][q] for q in rem.queries])
            metric.update(full[queries], removed, measured[method, -1, fraction][queries])
            res = metric.compute()
            per_query = [float(v) for v in res["relative_change"]]
            reference = reference or (method, per_query)
            difference = (torch.tensor(per_query) - torch.tensor(reference[1])).double()  # float32 difference
            out.append(RemovalRow(fraction, method, rem.measurement, float(res["mean"]), float(res["stderr"]),
                                  float(res["control_mean"]), float(res["control_stderr"]), per_query,
                                  PairedDifference.of(reference[0], difference)))
    return out


def headline_rows(rows: list[LDSRow], best_damping: bool = False) -> list[LDSRow]:
    """Per method and target: the most draws, scores from the target itself (else the method's own
    function, e.g. D-TRAK's ``sqnorm``), at the default damping or at the best one."""
    chosen: dict[tuple, LDSRow] = {}
    for r in rows:
        if is_timestep_measurement(r.target):
            continue
        key = (r.method, r.target)
        own = [x for x in rows if (x.method, x.target) == key]
        approx = r.target if any(x.approx == r.target for x in own) else own[0].approx
        draws = max(x.num_draws for x in own)
        if r.approx != approx or r.num_draws != draws or (not best_damping and not r.default_damping):
            continue
        if key not in chosen or (best_damping and r.mean > chosen[key].mean):
            chosen[key] = r
    return list(chosen.values())


def comparison(rows: list[LDSRow], reference: str | None = None) -> list[ComparisonRow]:
    """The comparison table (like the paper's Fig. 2): LDS at the default damping, at the damping chosen on
    held-out subsets (``selected``: two-fold cross-fitting, ``lit_attr.evaluation.selection``) and at the best
    damping of the sweep (chosen on the evaluation subsets themselves: optimistic, shown for reference).

    Each row also gets ``vs_reference``: the difference of its ``selected`` LDS to the ``reference`` method's
    (default: the first method) on the same target, mean ± s.e. over queries of the per-query differences
    (paired: both methods are ranked against the same retrained models, so query difficulty cancels), taken
    at the row's number of draws S when the reference reports it (so S = 32 ablations face S = 32).
    """
    best = {(r.method, r.target): r for r in headline_rows(rows, best_damping=True)}
    heads = headline_rows(rows)
    reference = reference or (heads[0].method if heads else None)
    out = []
    for r in heads:
        b = best[(r.method, r.target)]
        sweep = _sweep(rows, r)
        selected = cross_fitted(sweep)
        replicates = _held_out_replicates(sweep, selected.dampings)
        vs_reference, vs_reference_se = None, None
        ref = _reference_row(rows, best.get((reference, r.target)), r.num_draws)
        if ref is not None:
            ref_sweep = _sweep(rows, ref)
            ref_selected = cross_fitted(ref_sweep)
            vs_reference = PairedDifference.of(reference, torch.tensor(selected.per_query, dtype=torch.float64)
                                               - torch.tensor(ref_selected.per_query, dtype=torch.float64))
            ref_replicates = _held_out_replicates(ref_sweep, ref_selected.dampings)
            if replicates is not None and ref_replicates is not None:
                vs_reference_se = _sd(replicates - ref_replicates)
        out.append(ComparisonRow(r.method, r.target, r.approx, r.num_draws, DampedStat(r.damping, r.mean, r.stderr),
                                 selected, DampedStat(b.damping, b.mean, b.stderr), vs_reference,
                                 None if replicates is None else _sd(replicates), vs_reference_se))
    return out


def _sweep(rows: list[LDSRow], head: LDSRow) -> list[LDSRow]:
    """The rows of ``head``'s method, target, approximation and S at every damping of its sweep."""
    key = (head.method, head.target, head.approx, head.num_draws)
    return [x for x in rows if (x.method, x.target, x.approx, x.num_draws) == key]


def _reference_row(rows: list[LDSRow], head: LDSRow | None, num_draws: int) -> LDSRow | None:
    """The reference method's row for ``head``'s target and approximation at ``num_draws`` draws (``head``
    itself when the reference does not report that S)."""
    if head is None:
        return None
    same = [x for x in rows if (x.method, x.target, x.approx) == (head.method, head.target, head.approx)
            and x.num_draws == num_draws]
    return same[0] if same else head
