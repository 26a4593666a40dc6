"""Cost of K-FAC influence scoring vs a plain forward+backward over the same draws (prints ratios).

    python benchmarks/bench_attribution.py --checkpoint runs/digits/checkpoints/last.ckpt

Same model, same 1797 x S rows, same batches: (a) the floor: forward + backward of the batch's mean
loss with parameter gradients, as in training; (b) the scoring pass: per-example gradients of
every example (hooks + batched matmuls) scored layer by layer against Q preconditioned int8 queries
(``per_example_loss_scores``, what ``attribute.py`` runs);
(c) the curvature pass (K-FAC factors, MC-Fisher, expand) over S_curv draws per example.
"""

from __future__ import annotations

import argparse
import time

import torch

import benchlib  # noqa: F401  (puts this checkout's lit_attr first on sys.path)
from lit_attr.attribution.gradients import per_example_loss_scores
from lit_attr.attribution.quantize import compress
from lit_attr.curvature.kfac import fit_kfac_factors
from lit_attr.curvature.layers import num_kfac_parameters, select_kfac_modules
from lit_attr.data.datasets import load_digits_dataset
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import loss_per_example, unet_eps_model
from lit_attr.pipeline_io import load_ddpm_module


def batches(dataset, batch_size):
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        yield {"index": torch.tensor([it["index"] for it in items]), "image": torch.stack([it["image"] for it in items])}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/digits/checkpoints/last.ckpt")
    parser.add_argument("--num-draws", type=int, default=32)
    parser.add_argument("--curvature-draws", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--num-examples", type=int, default=1797)
    args = parser.parse_args()
    ddpm = load_ddpm_module(args.checkpoint)
    unet, schedule = ddpm.attribution_unet.eval().requires_grad_(True), ddpm.schedule
    modules = select_kfac_modules(unet)
    dataset = torch.utils.data.Subset(load_digits_dataset(), range(args.num_examples))
    data = list(batches(dataset, args.batch_size))
    draws = [draw_for_batch(b["index"], args.num_draws, (1, 8, 8), schedule.num_timesteps, 0, "train") for b in data]
    queries = compress(torch.randn(args.num_queries, num_kfac_parameters(modules)))

    def floor() -> None:
        for batch, (t, noise) in zip(data, draws):
            unet.zero_grad(set_to_none=True)
            loss_per_example(unet_eps_model(unet), schedule, batch["image"], t, noise).mean().backward()

    def scoring() -> None:
        for batch, (t, noise) in zip(data, draws):
            per_example_loss_scores(unet_eps_model(unet), schedule, modules, batch["image"], t, noise, queries, unet)

    def curvature() -> None:
        fit_kfac_factors(unet_eps_model(unet), schedule, modules, data, args.curvature_draws, model=unet)

    rows = args.num_examples * args.num_draws
    t_floor, t_score = timed(floor), timed(scoring)
    t_curv = timed(curvature)
    curv_floor = t_floor * args.curvature_draws / args.num_draws
    print(f"threads={torch.get_num_threads()} rows={rows} params={num_kfac_parameters(modules)} queries={args.num_queries}")
    print(f"floor  forward+backward : {t_floor:7.1f} s")
    print(f"scoring pass            : {t_score:7.1f} s   ratio to floor {t_score / t_floor:.2f}x")
    print(f"curvature pass (S={args.curvature_draws:3d})  : {t_curv:7.1f} s   ratio to floor over its rows {t_curv / curv_floor:.2f}x")


if __name__ == "__main__":
    main()
