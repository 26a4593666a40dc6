"""Which part of the stratified draw scheme carries its LDS: the stratified timesteps or the antithetic noise?

On finished benchmark roots, K-FAC influence (S = 32 training draws, damping 1e-8, 256 stratified query draws,
16 curvature draws) is scored with four variants of the *training* draws only, all built from the same two draw
streams of each example, while the query gradients and the curvature stay fixed:

    independent          t iid, eps iid                               (DrawScheme.INDEPENDENT)
    stratified           16 stratified timesteps, each with (eps, -eps) (DrawScheme.STRATIFIED, the default)
    strata_indep_noise   the stratified timesteps, eps iid            (stratified without the antithetic pairs)
    iid_t_antithetic     an iid timestep per pair, (eps, -eps)        (independent with antithetic pairs)

and prints each LDS (loss target) with its paired difference to ``stratified`` (mean ± s.e. over queries).

    python benchmarks/probe_draw_parts.py runs/lds_digits runs/lds_patches

Cost per root: one K-FAC fit and four passes of S draws per example (3-5 min for the 0.18M U-Net on one core).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_functions import Prober, load_benchmark, print_paired_table, run_probe_cli  # noqa: E402

from lit_attr.attribution.gradients import flatten_gradients, per_example_loss_gradients  # noqa: E402
from lit_attr.attribution.queries import QuerySet  # noqa: E402
from lit_attr.constants import QUERIES_FILE  # noqa: E402
from lit_attr.curvature.eigen import precondition  # noqa: E402
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch  # noqa: E402
from lit_attr.evaluation.results import lds  # noqa: E402

VARIANTS = ("independent", "stratified", "strata_indep_noise", "iid_t_antithetic")


def variant_draws(name: str, index: torch.Tensor, shape: tuple[int, ...], num_timesteps: int, num_draws: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (B, S) and noise (B, S, C, H, W) of one variant, from the independent and stratified streams."""
    t_iid, eps_iid = draw_for_batch(index, num_draws, shape, num_timesteps, seed, "train", DrawScheme.INDEPENDENT)
    t_strat, eps_anti = draw_for_batch(index, num_draws, shape, num_timesteps, seed, "train", DrawScheme.STRATIFIED)
    return {"independent": (t_iid, eps_iid), "stratified": (t_strat, eps_anti),
            "strata_indep_noise": (t_strat, eps_iid),
            "iid_t_antithetic": (t_iid[:, 0::2].repeat_interleave(2, dim=1)[:, :num_draws], eps_anti)}[name]


def probe(root: Path, num_draws: int, query_draws: int, damping: float, seed: int) -> None:
    start = time.perf_counter()
    bench, outcomes = load_benchmark(root)
    prober = Prober(bench, seed, DrawScheme.STRATIFIED)
    queries = QuerySet.load(root / QUERIES_FILE).images
    columns = flatten_gradients(precondition(prober.query_gradients("loss", queries, query_draws, seed),
                                             prober.curvature(), damping))
    target = outcomes.measured[:, :, 0, 0]
    per_query = {}
    for name in VARIANTS:
        rows = []
        for batch in prober.batches:
            t, noise = variant_draws(name, batch["index"], tuple(batch["image"].shape[1:]),
                                     prober.schedule.num_timesteps, num_draws, seed)
            grads = per_example_loss_gradients(prober.eps_model, prober.schedule, prober.modules, batch["image"], t,
                                               noise, prober.unet)
            rows.append((flatten_gradients(grads) @ columns.T).double())
        per_query[name] = np.asarray(lds(torch.cat(rows).numpy(), outcomes.masks, target).per_query)
    title = (f"{root} (S = {num_draws}, {query_draws} query draws, damping {damping:g}; "
             f"{time.perf_counter() - start:.0f} s)")
    print_paired_table(title, "training draws", per_query, "stratified")


def main() -> int:
    return run_probe_cli(__doc__.splitlines()[0], probe)


if __name__ == "__main__":
    sys.exit(main())
