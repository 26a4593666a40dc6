"""Which members of a stored ensemble carry its LDS? Every subset of the members, from the stored scores alone.

An ensemble method of a benchmark (``ensemble_continuation``, ``ensemble_steps`` or ``ensemble_seeds``) stores the
scores of each member: the full model in ``methods/<name>/`` and the others in ``methods/<name>/ensemble/<member>/``.
This probe averages the (N, Q) scores of the loss at S = ``--draws`` over every non-empty subset of the members,

    score_A[j, q] = 1 / |A| * sum_{m in A} score(theta_m)[j, q]

(eq. 6 per member, as ``lit_attr.attribution.checkpoint_ensemble`` averages them), and prints each subset's LDS at
the default damping and with the damping chosen on held-out subsets (``lit_attr.evaluation.selection``), with the
paired difference per query to the whole ensemble [± bootstrap over subsets]. Nothing is recomputed: it answers
"would fewer members (less attribution time) do as well?" on every root that has scored the ensemble.

    python benchmarks/probe_members.py runs/lds_photos_m40 runs/lds_photos_m40_independent --method kfac_continued4
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import load_benchmark, run_over_roots  # noqa: E402
from lit_attr.evaluation.results import lds  # noqa: E402
from lit_attr.evaluation.selection import cross_fitted  # noqa: E402
from lit_attr.evaluation.variants import load_variant_scores  # noqa: E402
from lit_attr.methods.base import AttributionMethod  # noqa: E402
from lit_attr.metrics.lds import subset_bootstrap, subset_resamples  # noqa: E402

FULL_MEMBER = "model"
"""How the table names the full model (the model as saved)."""


def member_scores(method_dir: Path, members: list[str], draws: int, draws_per_group: int,
                  measurements: list[str]) -> dict[str, np.ndarray]:
    """Per member: (N, D, Q) scores of the loss at S = ``draws`` (the mean of its first draws / draws_per_group
    groups) for each damping D."""
    groups = draws // draws_per_group
    loss = measurements.index("loss")
    dirs = {FULL_MEMBER: method_dir, **{name: AttributionMethod.member_dir(method_dir, name) for name in members}}
    return {name: load_variant_scores(d)[:, :groups, loss].mean(axis=1) for name, d in dirs.items()}


class _Row:
    """One damping's LDS with its per-fold per-query values (``selection.FoldedLDS``)."""

    def __init__(self, damping: float, folds: list[list[float]]) -> None:
        self.damping, self.folds = damping, folds


def held_out(scores: np.ndarray, dampings: list[float], masks: torch.Tensor,
             targets: torch.Tensor) -> tuple[float, np.ndarray, float]:
    """(LDS at the first damping, per-query held-out LDS (Q,), its mean) of (N, D, Q) ``scores``."""
    values = [lds(np.ascontiguousarray(scores[:, d]), masks, targets) for d in range(len(dampings))]
    fitted = cross_fitted([_Row(damping, v.folds) for damping, v in zip(dampings, values)])
    return values[0].mean, np.asarray(fitted.per_query), fitted.mean


def probe(root: Path, method_name: str | None, draws: int, resamples: int) -> None:
    bench, outcomes = load_benchmark(root)
    methods = [m for m in bench.config.methods if m.ensemble_members and (method_name in (None, m.name))]
    if not methods:
        raise SystemExit(f"{root}: no ensemble method{f' named {method_name!r}' if method_name else ''} in its "
                         "config; pass --method <name> of an entry with ensemble_continuation / ensemble_steps / "
                         "ensemble_seeds.")
    method = methods[0]
    # as the report: every subset, its target the mean of the seeds it has (NaN: missing)
    targets = outcomes.measured[:, :, 0, list(bench.config.true_measurements.measurements).index("loss")]
    masks = outcomes.masks
    scores = member_scores(bench.method_dir(method), method.ensemble_members, draws, method.draws_per_group,
                           list(method.measurements))
    names = list(scores)
    dampings = list(method.dampings)
    subsets = [combo for size in range(1, len(names) + 1) for combo in itertools.combinations(names, size)]
    rows = subset_resamples(len(masks), resamples)

    def boot(averaged: np.ndarray) -> torch.Tensor:  # (B,) LDS at the default damping per resample of the subsets
        return subset_bootstrap(torch.from_numpy(np.ascontiguousarray(averaged[:, 0])).double(), masks, targets, rows)

    whole = np.mean([scores[n] for n in names], axis=0)
    _, whole_per_query, _ = held_out(whole, dampings, masks, targets)
    whole_boot = boot(whole)
    print(f"\n{root}: {method.name}, S = {draws} per member, {len(masks)} subsets, "
          f"{targets.shape[-1]} queries; paired differences to all {len(names)} members: held-out damping, mean ± "
          "s.e. over queries [± bootstrap over subsets, default damping]")
    print("| members | cost | LDS, default damping | LDS, held-out damping | minus all members |\n|---|---|---|---|---|")
    for combo in subsets:
        averaged = np.mean([scores[n] for n in combo], axis=0)
        default, per_query, mean = held_out(averaged, dampings, masks, targets)
        diff = per_query - whole_per_query
        paired = boot(averaged) - whole_boot
        spread = float(paired[paired.isfinite()].std())  # resamples with too few distinct subsets give NaN
        print(f"| {' + '.join(combo)} | {len(combo)}x | {default:.3f} | {mean:.3f} | "
              f"{diff.mean():+.3f} ± {diff.std(ddof=1) / len(diff) ** 0.5:.3f} [± {spread:.3f}] |", flush=True)


def main() -> int:
    def add(parser):
        parser.add_argument("--method", default=None, help="the ensemble entry (default: the first with members)")
        parser.add_argument("--draws", type=int, default=32, help="S per member (a multiple of draws_per_group)")
        parser.add_argument("--resamples", type=int, default=200, help="bootstrap resamples of the subsets")

    return run_over_roots(__doc__, lambda root, args: probe(root, args.method, args.draws, args.resamples), add)


if __name__ == "__main__":
    raise SystemExit(main())
