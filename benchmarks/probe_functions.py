"""Which part of an influence estimate carries the LDS: the training function, the query function or the curvature?

On a finished benchmark root (its full model, queries, subsets and retrained models' measurements), score every
training example with each combination of

    training function  f_train in {loss (eq. 2), sqnorm = ||eps_theta(x_t, t)||^2 (D-TRAK's)}
    query function     f_query in {loss, sqnorm}
    preconditioner     (GGN_K-FAC + lambda I)^-1 for several lambda (eq. 12), or the identity (plain dot product)

    score[j, q] = grad f_query(x_q)^T P grad f_train(x_j)

and print the LDS of each against the root's loss target (no damping selection: every row is shown). It also
prints how well the query gradients of ``--query_draws`` and 16x as many draws agree (Spearman of the score
columns over the training examples): whether the query gradient's MC noise limits the LDS.

    python benchmarks/probe_functions.py runs/lds_patches runs/lds_digits

Cost per root: one K-FAC fit (16 draws per example) and two passes of S draws per example (a few minutes for
the 0.18M U-Net on one CPU core).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluate import benchmark_config, build_parser  # noqa: E402
from lit_attr.attribution.gradients import (  # noqa: E402
    flatten_gradients,
    per_example_loss_gradients,
    per_example_sqnorm_gradients,
)
from lit_attr.attribution.queries import QuerySet  # noqa: E402
from lit_attr.constants import BENCHMARK_CONFIG_FILE, FULL_DIR, MODEL_FILE, QUERIES_FILE  # noqa: E402
from lit_attr.curvature.eigen import eigendecompose_factors, precondition  # noqa: E402
from lit_attr.curvature.kfac import fit_kfac_factors  # noqa: E402
from lit_attr.curvature.layers import select_kfac_modules  # noqa: E402
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch  # noqa: E402
from lit_attr.diffusion.loss import unet_eps_model  # noqa: E402
from lit_attr.evaluation.campaign import Benchmark, pick_score_set  # noqa: E402
from lit_attr.evaluation.results import BenchmarkOutcomes, lds  # noqa: E402
from lit_attr.metrics.lds import spearman_per_query  # noqa: E402
from lit_attr.pipeline_io import load_ddpm_module  # noqa: E402

FUNCTIONS = {"loss": per_example_loss_gradients, "sqnorm": per_example_sqnorm_gradients}
IDENTITY = "identity"


def load_benchmark(root: Path) -> tuple[Benchmark, BenchmarkOutcomes]:
    parser = build_parser()
    args = parser.parse_args(["report", "--config", str(root / BENCHMARK_CONFIG_FILE)])
    bench = Benchmark(benchmark_config(parser.instantiate(args)["report"]))
    return bench, BenchmarkOutcomes.load(bench)


def run_over_roots(doc: str, probe, add_arguments=None) -> int:
    """The command line of the stored-score probes: ``roots...`` plus ``add_arguments(parser)``'s options;
    calls ``probe(root, args)`` for each root on one torch thread."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.roots:
        probe(root, args)
    return 0


def stored_loss_scores(bench: Benchmark):
    """Yield ``(method, score set, loss index)`` for every finished method of ``bench``: its score set with the
    most draws and the index on axis 1 of the scores of the loss (0 for a method with one function of its own)."""
    for method in bench.config.methods:
        try:
            score_set = pick_score_set(bench.score_sets(method), "loss", None)
        except (FileNotFoundError, RuntimeError, KeyError, ValueError):
            continue
        yield method, score_set, list(score_set.approx).index("loss") if "loss" in score_set.approx else 0


class Prober:
    """The full model of a root, its K-FAC curvature and per-example gradients of either function."""

    def __init__(self, bench: Benchmark, seed: int, scheme: DrawScheme, batch_size: int = 64) -> None:
        self.ddpm = load_ddpm_module(str(bench.root / FULL_DIR / MODEL_FILE))
        self.ddpm.requires_grad_(False)
        self.unet, self.schedule = self.ddpm.attribution_unet, self.ddpm.schedule
        self.modules = select_kfac_modules(self.unet)
        self.eps_model = unet_eps_model(self.unet)
        self.seed, self.scheme, self.batch_size = seed, scheme, batch_size
        self.dataset = bench.dataset
        self.batches = [self._batch(range(s, min(s + batch_size, len(self.dataset))))
                        for s in range(0, len(self.dataset), batch_size)]

    def _batch(self, rows: range) -> dict[str, torch.Tensor]:
        items = [self.dataset[i] for i in rows]
        return {"index": torch.tensor([int(it["index"]) for it in items]),
                "image": torch.stack([it["image"] for it in items])}

    def curvature(self, num_draws: int = 16):
        with torch.enable_grad():
            factors = fit_kfac_factors(self.eps_model, self.schedule, self.modules, self.batches, num_draws,
                                       self.seed, DrawScheme.INDEPENDENT, model=self.unet)
        return eigendecompose_factors(factors)

    def gradients(self, function: str, images: torch.Tensor, index: torch.Tensor, num_draws: int, stream: str,
                  seed: int | None = None) -> dict[str, torch.Tensor]:
        t, noise = draw_for_batch(index, num_draws, tuple(images.shape[1:]), self.schedule.num_timesteps,
                                  self.seed if seed is None else seed, stream, self.scheme)
        return FUNCTIONS[function](self.eps_model, self.schedule, self.modules, images, t, noise, self.unet)

    def query_gradients(self, function: str, images: torch.Tensor, num_draws: int, seed: int) -> dict:
        chunk = max(1, 8192 // num_draws)
        parts = [self.gradients(function, images[s:s + chunk], torch.arange(s, min(s + chunk, len(images))),
                                num_draws, "query", seed) for s in range(0, len(images), chunk)]
        return {name: torch.cat([p[name] for p in parts]) for name in self.modules}

    def scores(self, function: str, columns: torch.Tensor, num_draws: int) -> torch.Tensor:
        """(N, C) = training gradients of ``function`` (S = num_draws) against the (C, P) columns."""
        out = []
        for batch in self.batches:
            grads = flatten_gradients(self.gradients(function, batch["image"], batch["index"], num_draws, "train"))
            out.append((grads @ columns.T).double())
        return torch.cat(out)


def print_paired_table(title: str, row_label: str, per_query: dict[str, np.ndarray], reference: str) -> None:
    """A markdown table of each variant's LDS and its paired difference to ``reference`` (mean ± s.e. over queries)."""
    def se(v: np.ndarray) -> float:
        return float(v.std(ddof=1) / np.sqrt(len(v)))

    print(f"\n{title}\n| {row_label} | LDS | minus {reference} |\n|---|---|---|")
    for name, values in per_query.items():
        diff = values - per_query[reference]
        print(f"| {name} | {values.mean():.3f} ± {se(values):.3f} | {diff.mean():+.3f} ± {se(diff):.3f} |", flush=True)


def run_probe_cli(description: str, probe) -> int:
    """``ROOT... [--num-draws S] [--query-draws Q] [--damping D] [--seed s]``: ``probe(root, S, Q, D, s)`` per root."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("roots", nargs="+", type=Path)
    parser.add_argument("--num-draws", type=int, default=32)
    parser.add_argument("--query-draws", type=int, default=256)
    parser.add_argument("--damping", type=float, default=1e-8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.roots:
        probe(root, args.num_draws, args.query_draws, args.damping, args.seed)
    return 0


def probe(root: Path, num_draws: int, query_draws: int, dampings: list[float], seed: int) -> None:
    start = time.perf_counter()
    bench, outcomes = load_benchmark(root)
    prober = Prober(bench, seed, DrawScheme.STRATIFIED)
    eigen = prober.curvature()
    queries = QuerySet.load(root / QUERIES_FILE).images
    num_queries = len(queries)
    keys, columns = [], []
    for query_function in FUNCTIONS:
        grads = prober.query_gradients(query_function, queries, query_draws, seed)
        for damping in dampings:
            keys.append((query_function, damping))
            columns.append(flatten_gradients(precondition(grads, eigen, damping)))
        keys.append((query_function, IDENTITY))
        columns.append(flatten_gradients(grads))
    many = prober.query_gradients("loss", queries, 16 * query_draws, seed + 1)  # the agreement check
    for damping in dampings[:1]:
        keys.append(("loss x16", damping))
        columns.append(flatten_gradients(precondition(many, eigen, damping)))
    stacked = torch.cat(columns)
    target = outcomes.measured[:, :, 0, 0]
    print(f"\n{root} (target: {bench.config.true_measurements.measurements[0]}; S = {num_draws} training draws, "
          f"{query_draws} query draws)")
    print("| training function | query function | preconditioner | LDS |\n|---|---|---|---|")
    for train_function in FUNCTIONS:
        scores = prober.scores(train_function, stacked, num_draws)
        for k, (query_function, damping) in enumerate(keys):
            block = scores[:, k * num_queries:(k + 1) * num_queries]
            if query_function == "loss x16":
                if train_function == "loss":
                    base = scores[:, keys.index(("loss", damping)) * num_queries:][:, :num_queries]
                    rho = spearman_per_query(base, block)
                    agreement = (f"query gradients of {query_draws} vs {16 * query_draws} draws (loss, damping "
                                 f"{damping:g}): score columns agree at Spearman {rho.mean():.3f} (min {rho.min():.3f})")
                continue
            result = lds(block.numpy(), outcomes.masks, target)
            precon = IDENTITY if damping == IDENTITY else f"K-FAC, damping {damping:g}"
            print(f"| {train_function} | {query_function} | {precon} | {result.mean:+.3f} ± {result.stderr:.3f} |")
    print(agreement)
    print(f"({time.perf_counter() - start:.0f} s)")


def gradient_probe_parser(doc: str) -> argparse.ArgumentParser:
    """``roots... [--num_draws S] [--query_draws Q]``: the options of the probes that recompute gradients."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="finished benchmark roots (evaluate.py run)")
    parser.add_argument("--num_draws", type=int, default=32, help="S, training draws per example")
    parser.add_argument("--query_draws", type=int, default=256, help="draws of each query's gradient")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = gradient_probe_parser(__doc__)
    parser.add_argument("--dampings", type=float, nargs="+", default=[1e-8, 1e-2, 1.0, 100.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    for root in args.roots:
        probe(root, args.num_draws, args.query_draws, args.dampings, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
