"""The LDS benchmarks: ``python benchmarks/lds.py [--dataset digits|patches|photos] [--compare | --quick]
[--protocol common|independent] [--root DIR] [evaluate.py overrides]``.

Runs ``evaluate.py run`` with ``configs/lds/<dataset>.yaml`` (K-FAC influence, TRAK, D-TRAK and pixel
cosine; about 45 min on 2 idle CPU cores, photos about 90 min), with ``--compare`` (digits and patches) ``configs/lds/<dataset>_compare.yaml``
(the same root plus the draw-scheme and curvature levers and the removal experiment), or with ``--quick``
``configs/lds/digits_quick.yaml`` (digits, minutes). ``--protocol independent`` retrains the same
benchmark under the paper's seeding protocol in ``<root>_independent``, reusing the common root's full
model, queries and scores (run the common protocol first). Other arguments go to ``evaluate.py run`` (e.g.
``--removal.queries=[]``). Prints the results tables and the wall time.
Rerun to resume; delete the root folder to start over.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "patches", "photos"])
    variant = parser.add_mutually_exclusive_group()
    variant.add_argument("--quick", action="store_true", help="The minutes-long digits variant.")
    variant.add_argument("--compare", action="store_true", help="Levers, draw schemes and the removal experiment too.")
    parser.add_argument("--protocol", default="common", choices=["common", "independent"],
                        help="independent: retrain under the paper's protocol, reusing the common root's scores.")
    parser.add_argument("--root", help="Benchmark folder (default: the config's root).")
    args, overrides = parser.parse_known_args()
    if args.quick and args.dataset != "digits":
        parser.error("--quick exists for the digits only.")
    if args.compare and args.dataset == "photos":
        parser.error("--compare exists for digits and patches; for photos run configs/lds/photos_m12.yaml (README).")
    name = "digits_quick" if args.quick else f"{args.dataset}_compare" if args.compare else args.dataset
    config = ROOT / "configs" / "lds" / f"{name}.yaml"
    root = args.root or yaml.safe_load(config.read_text())["root"]
    command = [sys.executable, str(ROOT / "evaluate.py"), "run", "--config", str(config)]
    if args.protocol == "independent":
        command += [f"--root={root}_independent", f"--reuse={root}", "--retraining.protocol=independent",
                    "--removal.queries=[]"]
    elif args.root:
        command.append(f"--root={root}")
    start = time.perf_counter()
    code = subprocess.call(command + overrides, cwd=ROOT)
    print(f"benchmarks/lds.py with {config.name} ({args.protocol} seeds): exit {code}, "
          f"wall {(time.perf_counter() - start) / 60:.1f} min")
    return code


if __name__ == "__main__":
    sys.exit(main())
