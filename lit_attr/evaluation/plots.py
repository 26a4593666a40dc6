"""Figures of a benchmark report (matplotlib, Agg backend): LDS bars, damping sweeps, predicted-vs-actual
scatter and the measurement-substitution table; ``report.write_results`` saves them as PNGs and TensorBoard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lit_attr.measurements import is_timestep_measurement
from lit_attr.metrics.lds import predicted_changes

if TYPE_CHECKING:
    from lit_attr.evaluation.campaign import Benchmark
    from lit_attr.evaluation.results import BenchmarkOutcomes
    from lit_attr.evaluation.rows import LDSRow, Results


def benchmark_figures(bench: Benchmark, results: Results, outcomes: BenchmarkOutcomes,
                      headline_rows: list[LDSRow]) -> dict[str, Any]:
    """Matplotlib figures of a benchmark's results, by file stem.

    ``lds_bars``: LDS per method and target at the default and best damping (and the oracle);
    ``damping``: LDS against damping for swept methods; ``scatter``: predicted vs retrained change per subset
    for the first queries of the first method; ``substitution``: the measurement-substitution table.

    Args:
        bench: the benchmark (its methods' scores feed the scatter plot).
        results: ``compute_results`` output.
        outcomes: the retrained models' subsets (masks) and true measurements.
        headline_rows: per method and target, the row at the most draws (``results.headline_rows``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    rows = headline_rows
    targets = [t for t in results.diagnostics if not is_timestep_measurement(t)]
    fig, axes = plt.subplots(1, len(targets), figsize=(0.5 + 0.45 * len(results.comparison), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        sel = [c for c in results.comparison if c.target == target]
        labels = [c.method for c in sel]
        best = [c.best for c in sel]
        default = [c.default for c in sel]
        oracle = results.diagnostics[target].oracle_lds
        if oracle:
            labels.append("oracle")
            best.append(oracle)
            default.append(oracle)
        x = range(len(labels))
        ax.bar(x, [b.mean for b in best], color="C0", alpha=0.35, label="best damping")
        ax.bar(x, [d.mean for d in default], yerr=[d.stderr for d in default], width=0.5,
               color=["C0"] * len(sel) + ["C7"] * (len(labels) - len(sel)), label="default damping")
        ax.axhline(0, color="k", linewidth=0.5)
        ax.set_xticks(x, labels, rotation=35, ha="right")
        ax.set_title(f"LDS, target {target}")
        ax.set_ylabel("LDS (Spearman)")
        ax.legend(fontsize=7)
    figures["lds_bars"] = fig
    swept = sorted({r.method for r in results.lds if not r.default_damping})
    if swept:
        fig, axes = plt.subplots(1, len(targets), figsize=(4.5 * len(targets), 3.2), squeeze=False)
        for ax, target in zip(axes[0], targets):
            for method in swept:
                head = next(r for r in rows if r.method == method and r.target == target)
                curve = sorted((r.damping, r.mean) for r in results.lds if r.method == method
                               and r.target == target and r.approx == head.approx
                               and r.num_draws == head.num_draws and r.damping > 0)
                ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", label=method)
            ax.set_xscale("log")
            ax.set_xlabel("damping (mean-loss GGN units)")
            ax.set_ylabel("LDS")
            ax.set_title(f"target {target}")
            ax.legend(fontsize=7)
        figures["damping"] = fig
    method = next(m for m in bench.config.methods if m.name not in results.missing_methods)
    first = max(bench.score_sets(method), key=lambda s: s.draws)
    scores = first.scores[:, 0, 0]
    predicted = predicted_changes(torch.from_numpy(scores).double(), outcomes.masks)
    measured_names = list(bench.config.true_measurements.measurements)
    target_index = measured_names.index(first.approx[0]) if first.approx[0] in measured_names else 0
    actual = outcomes.measured[:, :, 0, target_index].nanmean(1)
    shown = min(4, predicted.shape[1])
    fig, axes = plt.subplots(1, shown, figsize=(3.2 * shown, 3.0), squeeze=False)
    for q, ax in enumerate(axes[0]):
        ax.scatter(predicted[:, q], actual[:, q], s=10)
        ax.set_title(f"query {q}")
        ax.set_xlabel("predicted change (scores)")
        if q == 0:
            ax.set_ylabel(f"retrained {measured_names[target_index]}")
    fig.suptitle(f"{method.name}: predicted vs actual per subset")
    figures["scatter"] = fig
    for table in results.substitution[:1]:
        mean = np.array(table.mean)
        fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(table.targets), 0.8 + 0.5 * len(table.approx)))
        limit = max(0.05, float(np.nanmax(np.abs(mean))))
        image = ax.imshow(mean, cmap="RdBu", vmin=-limit, vmax=limit)
        for (a, t), value in np.ndenumerate(mean):
            ax.text(t, a, f"{value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(table.targets)), table.targets, rotation=30, ha="right")
        ax.set_yticks(range(len(table.approx)), table.approx)
        ax.set_xlabel("target (retrained measurement)")
        ax.set_ylabel("scores from")
        ax.set_title(f"{table.method}: measurement substitution (LDS)")
        fig.colorbar(image, ax=ax)
        figures["substitution"] = fig
    return figures
