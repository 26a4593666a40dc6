"""How much does the LDS depend on which retrained seed is the target?

On finished benchmark roots with K >= 2 seeds on the subsets, every method's stored scores (the most draws,
default damping, scores of the loss) are ranked against the loss of each seed alone, eq. 13's mean over all
seeds, and the mean over the first two. Per cell: LDS, mean ± s.e. over queries [± s.e. over a bootstrap of
the subsets, ``lit_attr.metrics.lds.subset_bootstrap``]. Only subsets with every seed are used. Also prints the
seed reliability (Spearman across subsets between seeds 0 and 1, and its mean over all pairs of seeds), with
K >= 4 the two-seed oracle (the mean of seeds 0-1 predicting the mean of seeds 2-3: how reproducible a K = 2
target is), and the mean relative change of each seed's query loss against the full model.

    python benchmarks/probe_seeds.py runs/lds_digits runs/lds_patches

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
from lit_attr.metrics.lds import seed_reliability, subset_bootstrap, subset_resamples  # noqa: E402


def target_columns(measured: torch.Tensor) -> dict[str, torch.Tensor]:
    """The targets compared, each (M, k, Q): every seed alone, the first two seeds' mean, all seeds' mean."""
    num_seeds = measured.shape[1]
    columns = {f"seed {k}": measured[:, k : k + 1] for k in range(num_seeds)}
    if num_seeds > 2:
        columns["mean of seeds 0-1"] = measured[:, :2]
    columns[f"mean of {num_seeds} seeds"] = measured
    return columns


def probe(root: Path, resamples: int) -> None:
    bench, outcomes = load_benchmark(root)
    measured = outcomes.measured[:, :, 0, 0]  # (M, K, Q), loss target
    complete = ~measured.isnan().any(dim=2).any(dim=1)
    if measured.shape[1] < 2 or int(complete.sum()) < 3:
        raise SystemExit(f"{root}: needs >= 3 subsets with >= 2 seeds; train them with --retraining.num_seeds 2 "
                         "--retraining.extra_seed_subsets null.")
    measured, masks = measured[complete], outcomes.masks[complete]
    rows = subset_resamples(len(masks), resamples)
    full = bench.full_measurements()[0, 0]
    change = ((measured - full) / full).mean(dim=(0, 2))
    pairs = [(a, b) for a in range(measured.shape[1]) for b in range(a + 1, measured.shape[1])]
    reliability = torch.stack([seed_reliability(measured, a, b).nanmean() for a, b in pairs])
    print(f"\n{root}: {len(masks)} subsets x {measured.shape[1]} seeds; seed reliability (0 vs 1) "
          f"{float(reliability[0]):.3f}, mean over the {len(pairs)} pairs of seeds {float(reliability.mean()):.3f}; "
          "query loss vs the full model: "
          + ", ".join(f"seed {k} {float(c):+.1%}" for k, c in enumerate(change)))
    if measured.shape[1] >= 4:
        pair_means = torch.stack([measured[:, :2].mean(dim=1), measured[:, 2:4].mean(dim=1)], dim=1)
        two_seed = seed_reliability(pair_means)
        print(f"two-seed oracle (the mean of seeds 0-1 predicting the mean of seeds 2-3, the reliability of a K = 2 "
              f"target): {float(two_seed.nanmean()):.3f} ± {float(two_seed.std() / two_seed.numel() ** 0.5):.3f}; "
              f"Spearman-Brown from the single-seed mean: {float(2 * reliability.mean() / (1 + reliability.mean())):.3f}")
    columns = target_columns(measured)
    print("| method | S | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for method, score_set, approx in stored_loss_scores(bench):
        scores = np.ascontiguousarray(score_set.scores[:, approx, 0])
        cells = []
        for targets in columns.values():
            value = lds(scores, masks, targets)
            spread = subset_bootstrap(torch.from_numpy(scores), masks, targets, rows).std()
            cells.append(f"{value.mean:.3f} ± {value.stderr:.3f} [± {float(spread):.3f}]")
        print(f"| {method.name} | {score_set.draws or '–'} | " + " | ".join(cells) + " |", flush=True)


def main() -> int:
    return run_over_roots(__doc__, lambda root, args: probe(root, args.resamples), lambda parser: parser.add_argument(
        "--resamples", type=int, default=200, help="bootstrap resamples of the subsets"))


if __name__ == "__main__":
    sys.exit(main())
