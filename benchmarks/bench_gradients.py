"""Cost of per-example gradients, layer-wise scoring and K-FAC factors vs a plain forward+backward.

    python benchmarks/bench_gradients.py [--models digits-0.7M u32] [--threads 1] [--repeats 3]

Per model, over the same rows (N examples x S fixed draws, same batches), stages interleaved and
repeated (best of ``--repeats``, CPU time on CPU; ``benchlib``):

(a) floor: forward + mean-loss backward with parameter gradients (a training step without optimizer);
(b) per-example gradients of the loss averaged over the S draws, every layer's (B, out, in+1) block
    materialised (``per_example_loss_gradients``);
(c) scoring pass: the same gradients contracted layer by layer with Q int8 preconditioned queries
    (``per_example_loss_scores``; what ``attribute.py`` runs per batch);
(d) K-FAC factors, MC Fisher, expand (``KFACAccumulator.update_ddpm`` + ``finalize``);
(e) with ``--ekfac``, the EK-FAC eigenvalue-correction pass.

Targets (issue 14): (b)/(c) <= 1.3x and (d) <= 1.5x the floor. Models: ``digits-0.7M`` (701k
parameters, 1797 digits x 4 draws) and ``u32`` (4.4M parameters, 32 x 32 random images).
"""

from __future__ import annotations

import argparse

import torch

from benchlib import (
    batches_with_draws,
    build_preset,
    configure,
    digits_images,
    interleaved,
    machine_line,
    num_parameters,
    random_images,
    verdict,
)
from lit_attr.attribution.gradients import per_example_loss_gradients, per_example_loss_scores
from lit_attr.attribution.quantize import compress
from lit_attr.curvature import KFACAccumulator, eigendecompose_factors, num_kfac_parameters, select_kfac_modules
from lit_attr.curvature.eigen import EigenvalueCorrectionAccumulator
from lit_attr.diffusion.loss import expand_draws, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule

DEFAULTS = {"digits-0.7M": (1797, 128), "u32": (64, 16), "digits": (1797, 128), "cifar10": (16, 4)}
"""model -> (examples, examples per batch) when not given."""
TARGETS = {"gradients": 1.3, "scores": 1.3, "kfac": 1.5}


def gradient_stages(unet, batches, queries, ekfac: bool = False) -> dict:
    """The timed stages (a)-(e) over ``batches`` (``benchlib.Batch``)."""
    schedule, modules = DiffusionSchedule(1000), select_kfac_modules(unet)

    def eps(xt, t):
        return unet(xt, t).sample

    def floor() -> None:
        for b in batches:
            unet.zero_grad(set_to_none=True)
            loss_per_draw(eps, schedule, *expand_draws(b.images, b.timesteps, b.noise)).mean().backward()
        unet.zero_grad(set_to_none=True)

    def gradients() -> None:
        for b in batches:
            per_example_loss_gradients(eps, schedule, modules, b.images, b.timesteps, b.noise, model=unet)

    def scores() -> None:
        for b in batches:
            per_example_loss_scores(eps, schedule, modules, b.images, b.timesteps, b.noise, queries, model=unet)

    def kfac():
        accumulator = KFACAccumulator(modules, "mc", "expand", model=unet)
        for b in batches:
            accumulator.update_ddpm(eps, schedule, b.images, b.timesteps, b.noise, b.index)
        return accumulator.finalize()

    stages = {"floor": floor, "gradients": gradients, "scores": scores, "kfac": kfac}
    if ekfac:
        eigen = eigendecompose_factors(kfac())

        def ekfac_pass() -> None:
            correction = EigenvalueCorrectionAccumulator(modules, eigen, model=unet)
            for b in batches:
                correction.update_ddpm(eps, schedule, b.images, b.timesteps, b.noise, b.index)

        stages["ekfac"] = ekfac_pass
    return stages


LABELS = {"floor": "(a) forward+backward (floor)", "gradients": "(b) per-example gradients",
          "scores": "(c) scoring pass (layer-wise, int8 queries)", "kfac": "(d) K-FAC factors (mc, expand)",
          "ekfac": "(e) EK-FAC eigenvalue correction"}


def report(records: dict, indent: str = "  ") -> dict[str, float]:
    """Print one line per stage (wall, CPU, ratio to the floor, peak memory, verdict); returns ratios."""
    floor = records["floor"].seconds
    ratios = {}
    for name, record in records.items():
        ratios[name] = record.seconds / floor
        target = TARGETS.get(name)
        check = f"  target <= {target:.1f}x: {verdict(ratios[name], target)}" if target else ""
        print(f"{indent}{LABELS[name]:<46s} wall {record.wall:7.2f} s  cpu {record.cpu:7.2f} s  "
              f"{ratios[name]:5.2f}x  peak +{record.peak_mb:6.0f} MiB{check}", flush=True)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["digits-0.7M", "u32"], choices=sorted(DEFAULTS))
    parser.add_argument("--num-examples", type=int, default=None)
    parser.add_argument("--examples-per-batch", type=int, default=None)
    parser.add_argument("--num-draws", type=int, default=4)
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed or tf32 (GPU)")
    parser.add_argument("--ekfac", action="store_true")
    args = parser.parse_args()
    device = configure(args.device, args.threads, args.precision)
    print(machine_line())
    for name in args.models:
        unet, shape = build_preset(name)
        unet = unet.to(device)
        examples, per_batch = DEFAULTS[name]
        examples, per_batch = args.num_examples or examples, args.examples_per_batch or per_batch
        images = digits_images(examples) if shape == (1, 8, 8) else random_images(examples, shape)
        batches = batches_with_draws(images.to(device), per_batch, args.num_draws)
        for b in batches:
            b.timesteps, b.noise = b.timesteps.to(device), b.noise.to(device)
        modules = select_kfac_modules(unet)
        queries = compress(torch.randn(args.num_queries, num_kfac_parameters(modules), device=device))
        print(f"{name}: {num_parameters(unet):,} parameters, {len(modules)} K-FAC layers, image {shape}; "
              f"{examples} examples x {args.num_draws} draws = {examples * args.num_draws} rows in batches of "
              f"{per_batch} examples; {args.num_queries} queries; best of {args.repeats}")
        report(interleaved(gradient_stages(unet, batches, queries, args.ekfac), args.repeats))


if __name__ == "__main__":
    main()
