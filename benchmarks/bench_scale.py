"""Paper scale on CPU: the cifar10 U-Net (35.7M parameters, 32 x 32), end to end, and a projection.

    python benchmarks/bench_scale.py [--num-examples 256] [--num-draws 2] [--threads 2]

Writes a few hundred random-pixel images in CIFAR-10's python-batch format to a temporary folder,
loads them with ``lit_attr.data.cifar.load_cifar10_dataset`` and runs every attribution stage on
the ``configs/cifar10.yaml`` U-Net (random weights: the cost does not depend on them):

1. curvature: K-FAC factors (MC Fisher, expand) over N examples x ``--curvature-draws``;
2. eigenbases: ``eigendecompose_factors``;
3. query store: measurement gradients of Q queries x M draws, preconditioned, int8;
4. scoring: per-example loss gradients (N x S draws) scored layer-wise against the store.

It prints the time and the peak memory of each stage, the size of what each stage keeps, the cost per
row of the scoring and curvature passes relative to a plain forward+backward over the same rows
(interleaved on the first ``--ratio-batches`` batches, best of 2), and a projection for the paper's
CIFAR-10 job (50,000 examples x 250 draws, 250 curvature draws, 200 queries x 250 draws): at the
per-row rates measured here ("measured", on ``--device``: this CPU, or the GPU) and on 1 and 8 GPUs
from FLOP counts (torch's FLOP counter for the forward+backward; lit-attr's own count for K-FAC's
sums) and an assumed sustained GPU throughput (``--gpu-tflops``, a stated assumption, not a
measurement; the "measured" column of a ``--device cuda`` run is the measurement).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchlib import (
    StageTime,
    batches_with_draws,
    build_preset,
    configure,
    forward_backward_flops,
    interleaved,
    kfac_factor_flops,
    machine_line,
    num_parameters,
    run_stage,
    write_random_cifar10,
)
from lit_attr.attribution.gradients import flatten_gradients, per_example_loss_gradients, per_example_loss_scores
from lit_attr.attribution.quantize import compress
from lit_attr.curvature import KFACAccumulator, eigendecompose_factors, precondition, select_kfac_modules
from lit_attr.curvature.layers import gradient_shapes
from lit_attr.data.cifar import load_cifar10_dataset
from lit_attr.diffusion.loss import expand_draws, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule

PAPER = {"examples": 50_000, "draws": 250, "curvature_draws": 250, "queries": 200, "query_draws": 250}
"""The paper's CIFAR-10 job (App. G.7: 250 samples for every gradient and GGN computation)."""
GIB = 2**30


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def hours(seconds: float) -> str:
    return f"{seconds / 3600:8.2f} h" if seconds >= 360 else f"{seconds / 60:8.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="cifar10", choices=["cifar10", "u32"], help="u32: a quick smoke run")
    parser.add_argument("--num-examples", type=int, default=256)
    parser.add_argument("--num-draws", type=int, default=2, help="S per training example")
    parser.add_argument("--curvature-draws", type=int, default=1)
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--query-draws", type=int, default=8)
    parser.add_argument("--examples-per-batch", type=int, default=16)
    parser.add_argument("--curvature-rows-per-batch", type=int, default=64,
                        help="rows per K-FAC batch (examples x curvature draws); the factor sums have a fixed cost "
                             "per batch, so tiny batches inflate the K-FAC ratio")
    parser.add_argument("--ratio-batches", type=int, default=2)
    parser.add_argument("--damping", type=float, default=1e-8)
    parser.add_argument("--gpu-tflops", type=float, default=100.0,
                        help="assumed sustained GPU throughput (TFLOP/s) for the GPU projection")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = configure(args.device, args.threads)
    print(machine_line())
    unet, shape = build_preset(args.model)
    unet = unet.to(device)
    schedule, modules = DiffusionSchedule(1000).to(device), select_kfac_modules(unet)
    num_params = sum(out * cols for out, cols in gradient_shapes(modules).values())
    with tempfile.TemporaryDirectory() as folder:
        dataset = load_cifar10_dataset(write_random_cifar10(Path(folder) / "cifar-10-batches-py", args.num_examples))
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    print(f"{args.model} U-Net: {num_parameters(unet):,} parameters ({num_params:,} in {len(modules)} K-FAC layers); "
          f"{len(images)} random CIFAR-format images; S = {args.num_draws}, curvature S = {args.curvature_draws}, "
          f"{args.num_queries} queries x {args.query_draws} draws; batches of {args.examples_per_batch} examples")

    def eps(xt, t):
        return unet(xt, t).sample

    def on_device(batches):
        for b in batches:
            b.images, b.timesteps, b.noise = b.images.to(device), b.timesteps.to(device), b.noise.to(device)
        return batches

    train = on_device(batches_with_draws(images, args.examples_per_batch, args.num_draws, "train"))
    curvature_examples = max(1, args.curvature_rows_per_batch // args.curvature_draws)
    curvature = on_device(batches_with_draws(images, curvature_examples, args.curvature_draws, "curvature"))
    query = on_device(batches_with_draws(images[: args.num_queries], args.num_queries, args.query_draws, "query"))[0]

    # ------------------------------------------------------------------ cost per row vs the floor
    def floor(batches):
        for b in batches:
            unet.zero_grad(set_to_none=True)
            loss_per_draw(eps, schedule, *expand_draws(b.images, b.timesteps, b.noise)).mean().backward()
        unet.zero_grad(set_to_none=True)

    probe = compress(torch.randn(args.num_queries, num_params, device=device))
    few, few_curv = train[: args.ratio_batches], curvature[:1]

    def scoring(batches, queries):
        return torch.cat([per_example_loss_scores(eps, schedule, modules, b.images, b.timesteps, b.noise, queries,
                                                  unet) for b in batches])

    def kfac(batches):
        accumulator = KFACAccumulator(modules, "mc", "expand", model=unet)
        for b in batches:
            accumulator.update_ddpm(eps, schedule, b.images, b.timesteps, b.noise, b.index)
        return accumulator

    ratios = interleaved({"floor": lambda: floor(few), "scoring": lambda: scoring(few, probe),
                          "floor_curv": lambda: floor(few_curv), "kfac": lambda: kfac(few_curv)}, repeats=2,
                         warmup=False)
    rows_ratio = sum(len(b.timesteps.flatten()) for b in few)
    floor_row = ratios["floor"].seconds / rows_ratio
    score_ratio = ratios["scoring"].seconds / ratios["floor"].seconds
    kfac_ratio = ratios["kfac"].seconds / ratios["floor_curv"].seconds
    curv_rows = sum(len(b.timesteps.flatten()) for b in few_curv)
    print(f"\nper row (best of 2, interleaved): forward+backward {floor_row * 1e3:.2f} ms; scoring pass {score_ratio:.2f}x "
          f"(over {rows_ratio} rows in batches of {args.examples_per_batch * args.num_draws}); K-FAC pass "
          f"{kfac_ratio:.2f}x (over {curv_rows} rows in one batch) the forward+backward over the same rows")

    # ------------------------------------------------------------------ the stages, end to end
    records = {name: StageTime() for name in ("factors", "eigenbases", "query store", "scoring")}
    factors = run_stage(lambda: kfac(curvature).finalize(), records["factors"])
    eigen = run_stage(lambda: eigendecompose_factors(factors), records["eigenbases"])

    def query_store():
        grads = per_example_loss_gradients(eps, schedule, modules, query.images, query.timesteps, query.noise, unet)
        return compress(flatten_gradients(precondition(grads, eigen, args.damping)), "int8")

    store = run_stage(query_store, records["query store"])
    scores = run_stage(lambda: scoring(train, store), records["scoring"])
    assert scores.shape == (len(images), args.num_queries) and torch.isfinite(scores).all()
    kept = {
        "factors": tensor_bytes(*[t for pair in factors.factors.values() for t in pair]),
        "eigenbases": tensor_bytes(*[t for layer in eigen.layers.values() for t in (layer.QA, layer.lamA, layer.QG,
                                                                                   layer.lamG)]),
        "query store": tensor_bytes(store.values, store.scales),
        "scoring": scores.numel() * scores.element_size(),
    }
    largest_block = args.examples_per_batch * max(out * cols for out, cols in gradient_shapes(modules).values()) * 4
    print(f"\n{'stage':<12s} {'wall':>9s} {'cpu':>9s} {'peak +MiB':>10s} {'keeps MiB':>10s}")
    for name, r in records.items():
        print(f"{name:<12s} {r.wall:8.1f}s {r.cpu:8.1f}s {r.peak_mb:10.0f} {kept[name] / 2**20:10.1f}")
    print(f"per-batch gradients: the largest layer block is {largest_block / 2**20:.0f} MiB for "
          f"{args.examples_per_batch} examples (flat per-example gradients would be "
          f"{args.examples_per_batch * num_params * 4 / 2**20:.0f} MiB)")

    # ------------------------------------------------------------------ projection
    fb_flops = forward_backward_flops(unet.cpu(), shape)
    kfac_flops = fb_flops * 2 / 3 + kfac_factor_flops(unet, modules, shape)
    unet.to(device)
    rows = {"curvature": PAPER["examples"] * PAPER["curvature_draws"], "queries": PAPER["queries"] * PAPER["query_draws"],
            "scoring": PAPER["examples"] * PAPER["draws"]}
    cpu_seconds = {"curvature": rows["curvature"] * floor_row * kfac_ratio,
                   "queries": rows["queries"] * floor_row * score_ratio,
                   "scoring": rows["scoring"] * floor_row * score_ratio}
    gpu_seconds = {"curvature": rows["curvature"] * kfac_flops / (args.gpu_tflops * 1e12),
                   "queries": rows["queries"] * fb_flops / (args.gpu_tflops * 1e12),
                   "scoring": rows["scoring"] * fb_flops / (args.gpu_tflops * 1e12)}
    print(f"\nFLOPs per row: forward+backward {fb_flops / 1e9:.1f} GFLOP; K-FAC pass {kfac_flops / 1e9:.1f} GFLOP "
          f"({kfac_flops / fb_flops:.2f}x); scoring pass {fb_flops / 1e9:.1f} GFLOP (1.00x; the score matmul adds "
          f"{2 * num_params * PAPER['queries'] / PAPER['draws'] / 1e9:.2f} GFLOP per row)")
    print(f"Projection, paper's CIFAR-10 job ({PAPER['examples']:,} examples x {PAPER['draws']} draws, "
          f"{PAPER['curvature_draws']} curvature draws, {PAPER['queries']} queries x {PAPER['query_draws']} draws):")
    print(f"{'stage':<11s} {'rows':>12s} {'measured':>12s} {'1 GPU':>11s} {'8 GPUs':>11s}")
    for name in rows:
        print(f"{name:<11s} {rows[name]:12,d} {hours(cpu_seconds[name])} {hours(gpu_seconds[name])} "
              f"{hours(gpu_seconds[name] / (8 if name != 'queries' else 1))}")
    eigen_s = records["eigenbases"].seconds
    print(f"{'eigenbases':<11s} {'(fixed)':>12s} {hours(eigen_s)} {'(not projected: cuSOLVER, minutes)':>23s}")
    total_gpu1 = sum(gpu_seconds.values())
    total_gpu8 = gpu_seconds["curvature"] / 8 + gpu_seconds["queries"] + gpu_seconds["scoring"] / 8
    print(f"{'total':<11s} {sum(rows.values()):12,d} {hours(sum(cpu_seconds.values()) + eigen_s)} {hours(total_gpu1)} "
          f"{hours(total_gpu8)}   (GPU: {args.gpu_tflops:g} TFLOP/s sustained, assumed; queries on one GPU)")
    memory = {
        "factors (float64)": kept["factors"],
        "eigenbases (float32)": kept["eigenbases"],
        f"query store, int8, {PAPER['queries']} queries": PAPER["queries"] * (num_params + 4),
        f"scores, float32, {PAPER['examples']:,} x {PAPER['queries']}": PAPER["examples"] * PAPER["queries"] * 4,
        "per-batch activations per row (measured peak / rows)": records["scoring"].peak_mb * 2**20
        / (args.examples_per_batch * args.num_draws),
    }
    print("Memory of the paper's job (each GPU holds the factors' eigenbases and the query store):")
    for name, size in memory.items():
        print(f"  {name:<56s} {size / GIB:8.2f} GiB")


if __name__ == "__main__":
    main()
