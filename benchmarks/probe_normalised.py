"""Does dividing each training example's influence by the size of its gradient raise the LDS?

On finished benchmark roots, K-FAC influence (S = 32 stratified training draws, 256 stratified query draws, 16
curvature draws, damping 1e-8) is scored once, and each training example's row is divided by

    ||g_j||                     (``attribute.py --model.relative_influence true``)
    ||g_j||^2
    sqrt(g_j^T (GGN + d I)^-1 g_j)  for d = 1e-4 and 1e-2 (RelatIF's self-influence normalisation, Barshan et al. 2020)

with g_j the loss gradient of example j; it prints each LDS (loss target) with its paired difference to the raw
scores (mean ± s.e. over queries).

    python benchmarks/probe_normalised.py runs/lds_digits runs/lds_patches

Cost per root: one K-FAC fit and one pass of S draws per example with a preconditioning per example (1-3 min for
the 0.18M U-Net on one core).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import Prober, load_benchmark, print_paired_table, run_probe_cli  # noqa: E402

from lit_attr.attribution.gradients import flatten_gradients  # noqa: E402
from lit_attr.attribution.queries import QuerySet  # noqa: E402
from lit_attr.constants import QUERIES_FILE  # noqa: E402
from lit_attr.curvature.eigen import precondition  # noqa: E402
from lit_attr.diffusion.draws import DrawScheme  # noqa: E402
from lit_attr.evaluation.results import lds  # noqa: E402

SELF_DAMPINGS = (1e-4, 1e-2)


def probe(root: Path, num_draws: int, query_draws: int, damping: float, seed: int) -> None:
    start = time.perf_counter()
    bench, outcomes = load_benchmark(root)
    prober = Prober(bench, seed, DrawScheme.STRATIFIED)
    eigen = prober.curvature()
    queries = QuerySet.load(root / QUERIES_FILE).images
    columns = flatten_gradients(precondition(prober.query_gradients("loss", queries, query_draws, seed), eigen,
                                             damping))
    raw, norms, self_norms = [], [], {d: [] for d in SELF_DAMPINGS}
    for batch in prober.batches:
        grads = prober.gradients("loss", batch["image"], batch["index"], num_draws, "train")
        flat = flatten_gradients(grads)
        raw.append((flat @ columns.T).double())
        norms.append(flat.double().norm(dim=1))
        for d in SELF_DAMPINGS:
            self_influence = (flatten_gradients(precondition(grads, eigen, d)) * flat).sum(1).double()
            self_norms[d].append(self_influence.clamp_min(1e-30).sqrt())
    raw, norms = torch.cat(raw), torch.cat(norms)[:, None]
    variants = {"raw (eq. 6)": raw, "/ ||g||": raw / norms, "/ ||g||^2": raw / norms ** 2}
    variants.update({f"/ sqrt(self-influence, {d:g})": raw / torch.cat(v)[:, None] for d, v in self_norms.items()})
    target = outcomes.measured[:, :, 0, 0]
    per_query = {k: np.asarray(lds(v.numpy(), outcomes.masks, target).per_query) for k, v in variants.items()}
    title = (f"{root} (S = {num_draws}, {query_draws} query draws, damping {damping:g}; "
             f"{time.perf_counter() - start:.0f} s)")
    print_paired_table(title, "rows", per_query, "raw (eq. 6)")


def main() -> int:
    return run_probe_cli(__doc__.splitlines()[0], probe)


if __name__ == "__main__":
    sys.exit(main())
