"""One table across LDS benchmark roots: ``python benchmarks/lds_table.py ROOT [ROOT ...] [--target loss]``.

Reads each root's ``results.json`` (written by ``evaluate.py run`` / ``report``) and prints, per method,
the LDS of ``--target`` with the damping chosen on held-out subsets (two-fold cross-fitting), the paired
per-query difference to the root's reference method (mean ± s.e. over queries [± s.e. over a bootstrap of
the subsets, when the results have it]), and the root's oracle and seed reliability. This is the README's cross-dataset, cross-protocol table (README "Results").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _mean_se(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['stderr']:.3f}"


def _subset(value: float | None) -> str:
    """`` [± s]``: the bootstrap-over-subsets s.e. (results written before it existed have none)."""
    return "" if value is None else f" [± {value:.3f}]"


def _cell(row: dict | None) -> str:
    if row is None:
        return "–"
    value = row["selected"]
    diff = row.get("vs_reference")
    paired = ("" if diff is None or diff["method"] == row["method"] else
              f" ({diff['mean']:+.3f} ± {diff['stderr']:.3f}{_subset(row.get('vs_reference_subset_se'))})")
    return f"{_mean_se(value)}{_subset(row.get('subset_se'))}{paired}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", help="Benchmark roots holding results.json.")
    parser.add_argument("--target", default="loss", help="Target measurement (default: loss).")
    args = parser.parse_args()
    results = []
    for root in args.roots:
        path = Path(root) / "results.json"
        if not path.exists():
            parser.error(f"{path} does not exist; run `python evaluate.py report --config <config> --root {root}` first.")
        results.append(json.loads(path.read_text()))
    methods: list[str] = []
    for result in results:
        for row in result["comparison"]:
            if row["method"] not in methods:
                methods.append(row["method"])
    header = [f"{Path(root).name} ({r['protocol']}, M = {r['num_subsets']})" for root, r in zip(args.roots, results)]
    print("| method | " + " | ".join(header) + " |")
    print("|---|" + "---|" * len(header))
    for method in methods:
        cells = []
        for result in results:
            row = next((r for r in result["comparison"] if r["method"] == method and r["target"] == args.target), None)
            cells.append(_cell(row) if row is None else f"{_cell(row)} S={row['num_draws'] or '–'}")
        print(f"| {method} | " + " | ".join(cells) + " |")
    for label, key in (("oracle (exact retraining)", "oracle_lds"), ("measurement MC reliability", "measurement_mc_reliability")):
        cells = []
        for result in results:
            value = (result["diagnostics"].get(args.target) or {}).get(key)
            cells.append("–" if value is None else _mean_se(value))
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
