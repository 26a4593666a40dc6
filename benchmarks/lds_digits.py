"""The digits LDS benchmark: ``python benchmarks/lds_digits.py [--quick | --compare] [--root DIR]``.

Runs ``evaluate.py run`` with ``configs/lds/digits.yaml`` (K-FAC influence and pixel cosine, about
60 min on 2 CPU cores), with ``--compare`` ``configs/lds/digits_compare.yaml`` (the same plus TRAK,
D-TRAK and the Hessian ablation: the README's comparison table, about 25 min more on the same root),
or with ``--quick`` ``configs/lds/digits_quick.yaml`` (<= 10 min); prints the results tables and the
wall time. Rerun to resume; delete the root folder to start over.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--quick", action="store_true", help="The 10-minute variant.")
    variant.add_argument("--compare", action="store_true", help="All methods: TRAK, D-TRAK, Hessian ablation too.")
    parser.add_argument("--root", help="Benchmark folder (default: the config's root).")
    args = parser.parse_args()
    name = "digits_quick.yaml" if args.quick else "digits_compare.yaml" if args.compare else "digits.yaml"
    config = ROOT / "configs" / "lds" / name
    command = [sys.executable, str(ROOT / "evaluate.py"), "run", "--config", str(config)]
    if args.root:
        command.append(f"--root={args.root}")
    start = time.perf_counter()
    code = subprocess.call(command, cwd=ROOT)
    print(f"benchmarks/lds_digits.py with {name}: exit {code}, "
          f"wall {(time.perf_counter() - start) / 60:.1f} min")
    return code


if __name__ == "__main__":
    sys.exit(main())
