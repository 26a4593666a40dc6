"""The benchmark report: ``results.json``, ``results.md`` (its tables), the figures as PNGs, TensorBoard events.

The numbers come from ``lit_attr.evaluation.results.compute_results``; the figures from
``lit_attr.evaluation.plots``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lit_attr.constants import RESULTS_JSON, RESULTS_MD, TENSORBOARD_DIR
from lit_attr.evaluation.campaign import Benchmark
from lit_attr.evaluation.plots import benchmark_figures
from lit_attr.evaluation.results import BenchmarkOutcomes, headline_rows
from lit_attr.evaluation.rows import (
    NA,
    CrossFitted,
    DampedStat,
    LDSRow,
    PairedDifference,
    RemovalRow,
    Results,
    Stat,
    SubstitutionTable,
)
from lit_attr.storage import write_atomic


def _pm(stat: Stat | DampedStat | CrossFitted | PairedDifference | LDSRow | RemovalRow) -> str:
    """``mean ± s.e.`` with three decimals; ``n/a`` for a NaN mean, the mean alone for a NaN s.e."""
    if math.isnan(stat.mean):
        return "n/a"
    return f"{stat.mean:.3f} ± {stat.stderr:.3f}" if not math.isnan(stat.stderr) else f"{stat.mean:.3f}"


def _with_subset_se(text: str, subset_se: float | None) -> str:
    """``text`` and, when known, the bootstrap-over-subsets s.e. in brackets: ``0.25 ± 0.02 [± 0.07]``."""
    return text if subset_se is None or math.isnan(subset_se) else f"{text} [± {subset_se:.3f}]"


def markdown(results: Results) -> str:
    """The LDS table, diagnostics and removal table as markdown."""
    reference = next((c.vs_reference.method for c in results.comparison if c.vs_reference is not None), "-")
    lines = ["| method | target | scores from | S | LDS (default damping) | LDS (damping chosen on held-out subsets) | "
             f"LDS (best damping, optimistic) | held-out minus {reference} (paired) |", "|---|---|---|---|---|---|---|---|"]
    for c in results.comparison:
        delta = "n/a" if c.vs_reference is None else _with_subset_se(_pm(c.vs_reference), c.vs_reference_subset_se)
        draws = c.num_draws or "–"
        chosen = "/".join(f"{d:g}" for d in c.selected.dampings)
        lines.append(f"| {c.method} | {c.target} | {c.approx} | {draws} | "
                     f"{_pm(c.default)} ({c.default.damping:g}) | "
                     f"{_with_subset_se(_pm(c.selected), c.subset_se)} ({chosen}) | "
                     f"{_pm(c.best)} ({c.best.damping:g}) | {delta} |")
    lines += [""]
    lines += [f"LDS on {results.num_subsets} subsets ({results.num_subsets_with_two_seeds} with two seeds), "
              f"{results.num_queries} queries, N = {results.num_train}, seeding protocol "
              f"`{results.protocol}`; mean ± s.e. over queries [± s.e. over a bootstrap of the subsets: all queries "
              "share the subsets, so differences below it are not resolved].", "",
              "| method | draws | S | target | scores from | damping | LDS | split-half | LDS s.d. over draw sets |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results.lds:
        spread = f"{r.draw_sets.sd:.3f} ({len(r.draw_sets.lds)} sets)" if r.draw_sets is not None else "n/a"
        lines.append(f"| {r.method} | {r.draw_scheme} | {r.num_draws} | {r.target} | {r.approx} | "
                     f"{r.damping:g} | {_with_subset_se(_pm(r), r.subset_se)} | {_pm(r.split_half)} | {spread} |")
    lines += ["", "Noise diagnostics (targets):", "",
              "| target | oracle LDS (exact retraining) | seed reliability | measurement MC reliability |",
              "|---|---|---|---|"]
    for target, d in results.diagnostics.items():
        lines.append(f"| {target} | {_pm(d.oracle_lds or NA)} | {_pm(d.seed_reliability or NA)} | "
                     f"{_pm(d.measurement_mc_reliability)} |")
    for table in results.substitution:
        lines += _substitution_markdown(table)
    if results.missing_methods:
        lines += ["", f"Not scored yet (run `evaluate.py run`): {', '.join(results.missing_methods)}."]
    if results.removal:
        lines += ["", "Retraining without top influences (relative change of the measurement vs the full model):",
                  "", "| fraction | method | removed top positive | removed at random | minus first method (paired) |",
                  "|---|---|---|---|---|"]
        for r in results.removal:
            lines.append(f"| {r.fraction:g} | {r.method} | {_pm(r)} | {_pm(Stat(r.control_mean, r.control_stderr))} | "
                         f"{_pm(r.vs_reference)} |")
    return "\n".join(lines) + "\n"


def _substitution_markdown(table: SubstitutionTable) -> list[str]:
    lines = ["", f"Measurement substitution ({table.method}, S = {table.num_draws}, damping "
                 f"{table.damping:g}): LDS of each target (columns: the measurement retrained models are "
                 "measured with) when the scores use the gradient of another measurement (rows); the diagonal "
                 "uses the right one.", "",
             "| scores from \\ target | " + " | ".join(table.targets) + " |",
             "|---|" + "---|" * len(table.targets)]
    for a, approx in enumerate(table.approx):
        cells = [_pm(Stat(m, e)) for m, e in zip(table.mean[a], table.stderr[a])]
        cells = [f"**{c}**" if approx == t else c for c, t in zip(cells, table.targets)]
        lines.append(f"| {approx} | " + " | ".join(cells) + " |")
    return lines


def write_results(bench: Benchmark, results: Results,
                  outcomes: BenchmarkOutcomes | None = None) -> dict[str, Path]:
    """results.json, results.md, lds_bars.png, scatter.png under ``root`` and TensorBoard events."""
    root = bench.root
    paths = {"json": root / RESULTS_JSON, "markdown": root / RESULTS_MD}
    write_atomic(paths["json"], lambda tmp: tmp.write_text(json.dumps(results.to_json(), indent=2)))
    paths["markdown"].write_text(markdown(results))
    outcomes = outcomes or BenchmarkOutcomes.load(bench)
    figures = benchmark_figures(bench, results, outcomes, headline_rows(results.lds))
    for name, fig in figures.items():
        paths[name] = root / f"{name}.png"
        fig.savefig(paths[name], dpi=110, bbox_inches="tight")
    _tensorboard(root / TENSORBOARD_DIR, results, figures)
    return paths


def _tensorboard(log_dir: Path, results: Results, figures: dict[str, Any]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    for r in results.lds:
        tag = f"lds/{r.method}/S{r.num_draws}/{r.target}_from_{r.approx}"
        writer.add_scalar(tag, r.mean, global_step=int(round(-math.log10(r.damping))) if r.damping > 0 else 0)
    for target, d in results.diagnostics.items():
        for key, stat in d.stats().items():
            writer.add_scalar(f"diagnostics/{target}/{key}", stat.mean)
    for name, fig in figures.items():
        writer.add_figure(name, fig)
    writer.close()
