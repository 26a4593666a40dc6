"""Query scaling: the scoring pass with 1000 queries vs 10 on the digits model, and the query store size.

    python benchmarks/bench_queries.py [--num-examples 512] [--num-draws 32] [--threads 1]

The scoring pass (per-example loss gradients over S draws, scored layer-wise against int8
preconditioned queries; ``per_example_loss_scores``) runs over the same examples and draws with
``--few`` and ``--many`` random query rows, stored int8 as ``attribute.py`` keeps them (with a float32 copy of
the stored values while it fits ``--float-copy-mib``, attribute.py's ``--model.float_query_cache_mib``), int8
without that copy (``int8-nocopy``: each batch converts the store's columns) and float32 (``none``),
interleaved, best of ``--repeats``. The extra cost of more queries is the score matmul, ``2 D Q`` FLOPs
per example, plus (``int8-nocopy``) converting the store to float32 in column chunks once per batch. Targets (issue 14): many/few <= 1.3x; the int8 store <= 1/4 of the
float32 store, up to its per-query float32 scales (4 bytes per query).
"""

from __future__ import annotations

import argparse
import inspect

import torch

from benchlib import batches_with_draws, build_preset, configure, digits_images, interleaved, machine_line, verdict
from lit_attr.attribution.gradients import per_example_loss_scores
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.quantize import compress, with_float_copy
from lit_attr.curvature import num_kfac_parameters, select_kfac_modules
from lit_attr.diffusion.schedule import DiffusionSchedule


DEFAULT_FLOAT_COPY_MIB = inspect.signature(InfluenceModule).parameters["float_query_cache_mib"].default


def store_as(rows, mode: str, float_copy_mib: float):
    """``rows`` compressed as the scoring pass would hold them (``int8-nocopy``: int8 without the float32 copy)."""
    if mode == "int8-nocopy":
        return compress(rows, "int8")
    return with_float_copy(compress(rows, mode), int(float_copy_mib * 2**20))


def store_bytes(rows) -> int:
    return sum(t.numel() * t.element_size() for t in (rows.values, rows.scales) if t is not None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits", choices=["digits", "digits-0.7M"])
    parser.add_argument("--num-examples", type=int, default=512)
    parser.add_argument("--num-draws", type=int, default=32, help="S (configs/attribute/digits.yaml uses 32)")
    parser.add_argument("--examples-per-batch", type=int, default=64)
    parser.add_argument("--few", type=int, default=10)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--compression", nargs="+", default=["int8", "int8-nocopy", "none"],
                        choices=["int8", "int8-nocopy", "fp16", "none"])
    parser.add_argument("--float-copy-mib", type=float, default=DEFAULT_FLOAT_COPY_MIB,
                        help="budget of the int8/fp16 store's float32 copy (attribute.py's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = configure(args.device, args.threads)
    print(machine_line())
    unet, shape = build_preset(args.model)
    unet = unet.to(device)
    schedule, modules = DiffusionSchedule(1000).to(device), select_kfac_modules(unet)
    dim = num_kfac_parameters(modules)
    batches = batches_with_draws(digits_images(args.num_examples).to(device), args.examples_per_batch, args.num_draws)
    for b in batches:
        b.timesteps, b.noise = b.timesteps.to(device), b.noise.to(device)
    generator = torch.Generator().manual_seed(0)
    rows = {count: torch.randn(count, dim, generator=generator).to(device) for count in (args.few, args.many)}
    stores = {(mode, count): store_as(x, mode, args.float_copy_mib) for mode in args.compression
              for count, x in rows.items()}
    print(f"{args.model}: D = {dim:,} K-FAC parameters; {args.num_examples} examples x {args.num_draws} draws in "
          f"batches of {args.examples_per_batch}; {args.few} vs {args.many} queries ({', '.join(args.compression)}); "
          f"best of {args.repeats}")

    def scoring(store):
        for b in batches:
            per_example_loss_scores(lambda xt, t: unet(xt, t).sample, schedule, modules, b.images, b.timesteps,
                                    b.noise, store, unet)

    records = interleaved({key: (lambda s=store: scoring(s)) for key, store in stores.items()}, args.repeats)
    for (mode, count), r in records.items():
        print(f"  scoring pass, {mode:>4s}, {count:5d} queries  wall {r.wall:7.2f} s  cpu {r.cpu:7.2f} s  "
              f"peak +{r.peak_mb:5.0f} MiB")
    for mode in args.compression:
        ratio = records[(mode, args.many)].seconds / records[(mode, args.few)].seconds
        print(f"{mode}: {args.many} queries cost {ratio:.2f}x {args.few} queries (target <= 1.3x: {verdict(ratio, 1.3)})")
    for mode in args.compression:
        if stores[(mode, args.many)].float_values is not None:
            print(f"{mode}: {args.many} queries kept with a float32 copy of their stored values "
                  f"({store_bytes(stores[(mode, args.many)]) / 2**20:.1f} MiB stored + "
                  f"{stores[(mode, args.many)].float_values.numel() * 4 / 2**20:.1f} MiB copy)")
    many = compress(rows[args.many])
    int8, fp32 = store_bytes(many), many.shape[0] * many.shape[1] * 4
    fp16 = store_bytes(compress(torch.zeros(1, dim), "fp16")) * args.many
    print(f"query store for {args.many} queries: int8 {int8 / 2**20:.1f} MiB (+ {4 * args.many} B of scales), fp16 "
          f"{fp16 / 2**20:.1f} MiB, float32 {fp32 / 2**20:.1f} MiB; int8/float32 = {int8 / fp32:.6f} "
          f"(target <= 1/4 + scales: {verdict(int8, fp32 / 4 + 4 * args.many)})")


if __name__ == "__main__":
    main()
