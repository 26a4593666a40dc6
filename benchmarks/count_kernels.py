"""Operations launched per batch by each stage, against the floor: what makes a small model launch-bound on a GPU.

    python benchmarks/count_kernels.py [--model digits-0.7M] [--examples-per-batch 128] [--num-draws 4]
                                       [--device cuda] [--gpu-chunks]

One batch of fixed rows through the floor (a plain forward+backward), the per-example gradients, the
scoring pass against 8 int8 queries and the K-FAC pass (the stages of ``bench_gradients.py``), each once
to warm up and once under the torch profiler. On a GPU it counts the CUDA kernels launched; on a CPU it
counts the top-level aten operations and the non-view operations among the leaves (each of which would
be at least one kernel launch on a GPU). ``--gpu-chunks`` makes a CPU run use the GPU's im2col chunk size
(``lit_attr.curvature.conv_grads``), so the counts are those a GPU run would launch.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from benchlib import batches_with_draws, build_preset, configure, digits_images, machine_line, random_images
from torch.profiler import ProfilerActivity, profile

from lit_attr.attribution.gradients import per_example_loss_gradients, per_example_loss_scores
from lit_attr.attribution.quantize import compress
from lit_attr.curvature import KFACAccumulator, conv_grads, num_kfac_parameters, select_kfac_modules
from lit_attr.diffusion.loss import expand_draws, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule

VIEWS = frozenset(f"aten::{name}" for name in (
    "slice", "reshape", "_reshape_alias", "_unsafe_view", "view", "view_as", "transpose", "t", "numpy_T", "permute",
    "unsqueeze", "squeeze", "select", "expand", "as_strided", "detach", "detach_", "alias", "flatten", "unbind",
    "split", "chunk", "narrow", "to", "contiguous", "empty", "empty_strided", "empty_like", "resolve_conj",
    "resolve_neg", "lift_fresh", "result_type", "matmul", "linear", "conv2d", "convolution", "_convolution",
    "zeros", "new_zeros", "set_",
))
"""Aten operations that launch no kernel of their own (views, allocations, dispatch wrappers)."""


def count(fn, on_gpu: bool) -> tuple[int, int, Counter]:
    """(top-level aten operations, kernels, kernels by name) of one call of ``fn`` after a warm-up call."""
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        fn()
        if on_gpu:
            torch.cuda.synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]
    top = [e for e in aten if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
    if on_gpu:
        kernels = Counter(e.name[:60] for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        leaves = [e for e in aten if not any(c.name.startswith("aten::") for c in e.cpu_children)]
        kernels = Counter(e.name for e in leaves if e.name not in VIEWS)
    return len(top), sum(kernels.values()), kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits-0.7M", choices=["digits", "digits-0.7M", "u32"])
    parser.add_argument("--examples-per-batch", type=int, default=None, help="default: 128 (digits), 16 (u32)")
    parser.add_argument("--num-draws", type=int, default=4)
    parser.add_argument("--num-queries", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--gpu-chunks", action="store_true", help="CPU run with the GPU's im2col chunk size")
    parser.add_argument("--top", type=int, default=0, help="also print the N most launched kernels per stage")
    args = parser.parse_args()
    device = configure(args.device, threads=1 if args.device == "cpu" else None)
    on_gpu = device.type == "cuda"
    if args.gpu_chunks:
        conv_grads.IM2COL_CHUNK_ELEMENTS = conv_grads.IM2COL_CHUNK_ELEMENTS_GPU
    unet, shape = build_preset(args.model)
    unet = unet.to(device)
    per_batch = args.examples_per_batch or (16 if args.model == "u32" else 128)
    images = digits_images(per_batch) if shape == (1, 8, 8) else random_images(per_batch, shape)
    b = batches_with_draws(images.to(device), per_batch, args.num_draws)[0]
    b.timesteps, b.noise = b.timesteps.to(device), b.noise.to(device)
    schedule, modules = DiffusionSchedule(1000).to(device), select_kfac_modules(unet)
    queries = compress(torch.randn(args.num_queries, num_kfac_parameters(modules), device=device))
    accumulator = KFACAccumulator(modules, "mc", "expand", model=unet)

    def eps(xt, t):
        return unet(xt, t).sample

    def floor() -> None:
        unet.zero_grad(set_to_none=True)
        loss_per_draw(eps, schedule, *expand_draws(b.images, b.timesteps, b.noise)).mean().backward()
        unet.zero_grad(set_to_none=True)

    stages = {
        "floor": floor,
        "gradients": lambda: per_example_loss_gradients(eps, schedule, modules, b.images, b.timesteps, b.noise,
                                                        model=unet),
        "scores": lambda: per_example_loss_scores(eps, schedule, modules, b.images, b.timesteps, b.noise, queries,
                                                  model=unet),
        "kfac": lambda: accumulator.update_ddpm(eps, schedule, b.images, b.timesteps, b.noise, b.index),
    }
    print(machine_line())
    print(f"{args.model}: {len(modules)} K-FAC layers; one batch of {per_batch} examples x {args.num_draws} draws"
          f"{'; GPU im2col chunks' if args.gpu_chunks else ''}")
    unit = "CUDA kernels" if on_gpu else "non-view aten ops"
    print(f"{'stage':10s} {'top-level aten ops':>19s} {unit:>18s} {'x floor':>8s}")
    floor_kernels = None
    for name, fn in stages.items():
        top, kernels, by_name = count(fn, on_gpu)
        floor_kernels = floor_kernels or kernels
        print(f"{name:10s} {top:19d} {kernels:18d} {kernels / floor_kernels:8.2f}")
        if args.top:
            print("    " + ", ".join(f"{k} {v}" for k, v in by_name.most_common(args.top)))


if __name__ == "__main__":
    main()
