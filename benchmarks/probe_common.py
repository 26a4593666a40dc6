"""How much of the LDS is a subset effect shared by every query, and which methods predict it?

All queries of a benchmark are ranked against the same subsets, and a subset's retrained models can be better
or worse for *every* query (how well a half-dataset model trained overall). This probe splits both sides:

- targets: the *shared-effect ceiling* of query q is the Spearman correlation across subsets between q's target
  and the mean target of the other queries (what ranking the subsets by their overall quality alone reaches);
- scores: each method's (N, Q) scores (the most draws, scores of the loss, at every damping it stored with
  ``--all-dampings``, else at its default, the first) are standardised
  per query column; their mean over queries, c_j, is the *common* part (one number per training example, the
  same for every query), the rest the *query-specific* part. Both are scored with the LDS (eq. 13) against the
  root's targets (mean over seeds), beside the scores themselves;
- and the scores are scored against *query-specific targets*: each subset's target minus its mean over all
  queries (the measurement's change relative to the other queries), where the shared effect is gone and what
  is left is which training images matter for *this* query.

    python benchmarks/probe_common.py runs/lds_patches_independent runs/lds_digits_independent

Cost: seconds per root (no model is run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import load_benchmark, run_over_roots, stored_loss_scores  # noqa: E402

from lit_attr.evaluation.results import lds  # noqa: E402
from lit_attr.metrics.lds import spearman_per_query  # noqa: E402


def shared_effect_ceiling(targets: torch.Tensor) -> torch.Tensor:
    """(Q,): Spearman across subsets between each query's target (M, Q) and the mean of the other queries'."""
    total = targets.sum(dim=1, keepdim=True)
    others = (total - targets) / (targets.shape[1] - 1)
    return spearman_per_query(targets, others)


def split_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(common, specific), each (N, Q): the per-query standardised scores' mean over queries, and the rest."""
    z = (scores - scores.mean(axis=0)) / np.maximum(scores.std(axis=0), 1e-30)
    common = np.repeat(z.mean(axis=1, keepdims=True), scores.shape[1], axis=1)
    return common, z - common


def probe(root: Path, all_dampings: bool = False) -> None:
    bench, outcomes = load_benchmark(root)
    measured = outcomes.measured[:, :, 0, 0]  # (M, K, Q), loss target
    complete = ~measured.isnan().any(dim=2).all(dim=1)
    measured, masks = measured[complete], outcomes.masks[complete]
    targets = measured.nanmean(dim=1)  # (M, Q)
    ceiling = shared_effect_ceiling(targets)
    print(f"\n{root}: {len(masks)} subsets, {targets.shape[1]} queries; shared-effect ceiling (each query's target "
          f"against the other queries' mean) {float(ceiling.mean()):.3f} ± {float(ceiling.std() / len(ceiling) ** 0.5):.3f}")
    specific_targets = measured - measured.nanmean(dim=2, keepdim=True)  # (M, K, Q), each seed's shared effect removed
    print("| method | S | damping | scores | common part (the same for every query) | query-specific part | "
          "scores vs query-specific targets |\n|---|---|---|---|---|---|---|")
    for method, score_set, approx in stored_loss_scores(bench):
        for index, damping in list(enumerate(score_set.dampings))[: None if all_dampings else 1]:
            scores = np.ascontiguousarray(score_set.scores[:, approx, index], dtype=np.float64)
            common, specific = split_scores(scores)
            cells = [lds(s, masks, measured) for s in (scores, common, specific)]
            cells.append(lds(scores, masks, specific_targets))
            print(f"| {method.name} | {score_set.draws or '–'} | {damping:g} | "
                  + " | ".join(f"{c.mean:.3f} ± {c.stderr:.3f}" for c in cells) + " |", flush=True)


def main() -> int:
    return run_over_roots(__doc__, lambda root, args: probe(root, args.all_dampings), lambda parser: parser.add_argument(
        "--all-dampings", action="store_true", help="a row per stored damping, not only the default"))


if __name__ == "__main__":
    sys.exit(main())
