"""Cost of per-example gradients and K-FAC accumulation relative to a plain forward+backward.

On the digits U-Net (block_out_channels=(32, 64), 701k parameters) and sklearn's digits
(1797 images, 1 x 8 x 8, scaled to [-1, 1]), with S draws per example, times over the same rows:

(a) the floor: forward + mean-loss backward with parameter gradients (a training step without the
    optimizer);
(b) per-example gradients of the loss averaged over the S draws (``per_example_loss_gradients``);
(c) K-FAC factor accumulation, MC Fisher, expand (``KFACAccumulator.update_ddpm`` + finalize);
(d) optionally (``--ekfac``) the EK-FAC eigenvalue-correction pass.

Run: ``python benchmarks/bench_gradients.py [--num-examples 1797] [--examples-per-batch 128] [--threads 1]``
(about 2 minutes on 2 CPU cores). On a busy machine ``--threads 1`` gives steadier numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from diffusers import UNet2DModel
from sklearn.datasets import load_digits

from lit_attr.attribution.gradients import per_example_loss_gradients
from lit_attr.curvature import KFACAccumulator, eigendecompose_factors, select_kfac_modules
from lit_attr.curvature.eigen import EigenvalueCorrectionAccumulator
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import expand_draws, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule


def digits_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), block_out_channels=(32, 64), layers_per_block=1,
        norm_num_groups=8, attention_head_dim=8,
    )


def make_batches(num_examples: int, examples_per_batch: int, num_draws: int) -> list[tuple]:
    images = torch.tensor(load_digits().images[:num_examples] / 8.0 - 1.0, dtype=torch.float32).unsqueeze(1)
    batches = []
    for start in range(0, num_examples, examples_per_batch):
        index = torch.arange(start, min(start + examples_per_batch, num_examples))
        timesteps, noise = draw_for_batch(index, num_draws, (1, 8, 8), 1000, seed=0, stream="curvature")
        batches.append((index, images[index], timesteps, noise))
    return batches


def timed(label: str, fn: Callable[[], None], floor: float | None = None) -> float:
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    ratio = f"  ({seconds / floor:.2f}x floor)" if floor else ""
    print(f"{label:<44s} {seconds:7.2f} s{ratio}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-examples", type=int, default=1797)
    parser.add_argument("--examples-per-batch", type=int, default=128)
    parser.add_argument("--num-draws", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--ekfac", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    unet, schedule = digits_unet(), DiffusionSchedule(1000)
    modules = select_kfac_modules(unet)
    eps = lambda xt, t: unet(xt, t).sample  # noqa: E731
    batches = make_batches(args.num_examples, args.examples_per_batch, args.num_draws)
    rows = args.num_examples * args.num_draws
    print(f"{sum(p.numel() for p in unet.parameters()):,} parameters, {len(modules)} K-FAC layers; {rows} rows "
          f"({args.num_examples} examples x {args.num_draws} draws) in batches of {args.examples_per_batch} examples; "
          f"{torch.get_num_threads()} threads")

    def floor_pass(batches: list[tuple] = batches) -> None:
        for _, x0, timesteps, noise in batches:
            unet.zero_grad(set_to_none=True)
            loss_per_draw(eps, schedule, *expand_draws(x0, timesteps, noise)).mean().backward()
        unet.zero_grad(set_to_none=True)

    def gradients_pass() -> None:
        for _, x0, timesteps, noise in batches:
            per_example_loss_gradients(eps, schedule, modules, x0, timesteps, noise, model=unet)

    accumulator = KFACAccumulator(modules, "mc", "expand", model=unet)

    def kfac_pass() -> None:
        for index, x0, timesteps, noise in batches:
            accumulator.update_ddpm(eps, schedule, x0, timesteps, noise, index)

    floor_pass(batches[:1])  # warm-up (kernels, plans)
    per_example_loss_gradients(eps, schedule, modules, *batches[0][1:], model=unet)
    floor = timed("(a) forward+backward (floor)", floor_pass)
    timed("(b) per-example gradients", gradients_pass, floor)
    timed("(c) K-FAC factors (mc, expand)", kfac_pass, floor)
    if args.ekfac:
        eigen = eigendecompose_factors(accumulator.finalize())
        correction = EigenvalueCorrectionAccumulator(modules, eigen, model=unet)

        def ekfac_pass() -> None:
            for index, x0, timesteps, noise in batches:
                correction.update_ddpm(eps, schedule, x0, timesteps, noise, index)

        timed("(d) EK-FAC eigenvalue correction (mc)", ekfac_pass, floor)


if __name__ == "__main__":
    main()
