"""The digits LDS benchmark: ``python benchmarks/lds_digits.py [--quick] [--root DIR]``.

Runs ``evaluate.py run`` with ``configs/lds/digits.yaml`` (<= 60 min on 2 CPU cores) or, with
``--quick``, ``configs/lds/digits_quick.yaml`` (<= 10 min), prints the results table and the wall
time. Rerun to resume; delete the root folder to start over.
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
    parser.add_argument("--quick", action="store_true", help="The 10-minute variant.")
    parser.add_argument("--root", help="Benchmark folder (default: the config's root).")
    args = parser.parse_args()
    config = ROOT / "configs" / "lds" / ("digits_quick.yaml" if args.quick else "digits.yaml")
    command = [sys.executable, str(ROOT / "evaluate.py"), "run", "--config", str(config)]
    if args.root:
        command.append(f"--root={args.root}")
    start = time.perf_counter()
    code = subprocess.call(command, cwd=ROOT)
    print(f"benchmarks/lds_digits.py{' --quick' if args.quick else ''}: exit {code}, "
          f"wall {(time.perf_counter() - start) / 60:.1f} min")
    return code


if __name__ == "__main__":
    sys.exit(main())
