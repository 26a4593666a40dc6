"""Run every performance benchmark and write their figures to one file (for a GPU machine).

    pip install -e '.[bench]'
    python benchmarks/run_all.py --device cuda [--out benchmarks/results_gpu.txt] [--quick]

Runs, each in its own process (so peak-memory figures do not mix), with ``--device`` passed on:
``bench_gradients.py`` (0.7M digits and 32 x 32 U-Nets, float32 and, on a GPU, bf16-mixed and TF32),
``bench_queries.py``, ``count_kernels.py`` (operations launched per batch), ``compare_kronfluence.py`` (0.7M digits and 32 x 32 U-Nets; skipped when
kronfluence is not installed) and ``bench_scale.py`` (35.7M cifar10 U-Net and the projection of the
paper's job). Every line they print goes to the file, headed by the command, with the exit status.
``--quick`` shrinks every benchmark to a smoke run (minutes on a CPU) to check the script itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

QUICK = {
    "bench_gradients.py": ["--num-examples", "32", "--examples-per-batch", "16", "--repeats", "1"],
    "bench_queries.py": ["--num-examples", "64", "--num-draws", "4", "--repeats", "1", "--many", "100"],
    "count_kernels.py": ["--examples-per-batch", "16"],
    "compare_kronfluence.py": ["--num-examples", "32", "--repeats", "1"],
    "bench_scale.py": ["--model", "u32", "--num-examples", "8", "--num-draws", "1", "--examples-per-batch", "4",
                       "--num-queries", "2", "--query-draws", "2", "--ratio-batches", "1"],
}


def commands(device: str, quick: bool) -> list[list[str]]:
    """The benchmark command lines, in order."""
    gpu = device.startswith("cuda")
    runs = [["bench_gradients.py", "--models", "digits-0.7M", "u32"]]
    if gpu:
        runs += [["bench_gradients.py", "--models", "digits-0.7M", "u32", "--precision", p] for p in ("bf16-mixed", "tf32")]
    runs += [["bench_queries.py"], ["count_kernels.py"]]
    if importlib.util.find_spec("kronfluence") is not None:
        runs += [["compare_kronfluence.py", "--model", "digits-0.7M"], ["compare_kronfluence.py", "--model", "u32"]]
    runs += [["bench_scale.py"] + (["--num-examples", "2048", "--num-draws", "8", "--examples-per-batch", "64"]
                                   if gpu else [])]
    out = []
    for run in runs:
        extra = QUICK[run[0]] if quick else []
        if run[0] == "compare_kronfluence.py" and quick and "u32" in run:
            extra = ["--num-examples", "8", "--examples-per-batch", "4", "--repeats", "1"]
        out.append([sys.executable, str(HERE / run[0]), *run[1:], "--device", device, *extra])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--out", default=None, help="default: benchmarks/results_<device>.txt")
    parser.add_argument("--quick", action="store_true", help="smoke-sized runs")
    args = parser.parse_args()
    out = Path(args.out or HERE / f"results_{args.device.split(':')[0]}{'_quick' if args.quick else ''}.txt")
    failures = 0
    with out.open("w") as handle:
        for command in commands(args.device, args.quick):
            line = " ".join(Path(c).name if c.endswith(".py") else c for c in command[1:])
            print(f"$ python benchmarks/{line}", flush=True)
            handle.write(f"$ python benchmarks/{line}\n")
            handle.flush()
            start = time.perf_counter()
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=HERE.parent)
            handle.write(result.stdout)
            handle.write(f"[exit {result.returncode}, {time.perf_counter() - start:.0f} s]\n\n")
            handle.flush()
            print(result.stdout[-2000:], flush=True)
            failures += result.returncode != 0
    print(f"Wrote {out} ({failures} benchmark(s) failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
