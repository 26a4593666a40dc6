"""Shared pieces of the benchmarks: model presets, data and draws, interleaved timing, peak memory,
Spearman, FLOP counts and PASS/FAIL lines. Not part of the library (``python benchmarks/<x>.py``).

Timing protocol (the project's CPU machine is shared): every stage runs ``repeats`` times, the
stages alternate (floor, ours, floor, ours, ...), and the best wall time and the best process CPU
time of each stage are kept; ratios use the CPU time on CPU (waiting for a busy core does not count)
and wall time on GPU. Peak memory is how far the process's resident set rose above its level at the
start of the stage (``/proc/self/status`` VmHWM, reset per stage) on CPU, and
``torch.cuda.max_memory_allocated`` above the allocation at the start on GPU.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's lit_attr, not another installed copy

from lit_attr.diffusion.draws import draw_for_batch  # noqa: E402
from lit_attr.diffusion.unet import UNetConfig, build_unet  # noqa: E402

U32_UNET = UNetConfig(
    block_out_channels=(64, 128, 128), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=32,
    attention_head_dim=64,
)
"""The 32 x 32 U-Net of a few million parameters (4.4M): three levels, attention at 16 x 16."""


def _config_unet(name: str) -> UNetConfig:
    return UNetConfig(**yaml.safe_load((ROOT / "configs" / name).read_text())["model"]["unet"])


PRESETS: dict[str, tuple[Callable[[], UNetConfig], tuple[int, int, int]]] = {
    "digits": (lambda: _config_unet("digits.yaml"), (1, 8, 8)),
    "digits-0.7M": (lambda: UNetConfig(block_out_channels=(32, 64)), (1, 8, 8)),
    "u32": (lambda: U32_UNET, (3, 32, 32)),
    "cifar10": (lambda: _config_unet("cifar10.yaml"), (3, 32, 32)),
}
"""name -> (U-Net config, image shape): digits (configs/digits.yaml, 0.18M), digits-0.7M (the
ENVIRONMENT.md reference U-Net), u32 (4.4M, 32 x 32), cifar10 (configs/cifar10.yaml, 35.7M)."""


def build_preset(name: str, seed: int = 0) -> tuple[UNet2DModel, tuple[int, int, int]]:
    """A seeded U-Net of preset ``name`` in eval mode (no dropout) and its image shape."""
    config, shape = PRESETS[name]
    torch.manual_seed(seed)
    config = config()
    config.dropout = 0.0
    return build_unet(config, shape).eval(), shape


def num_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- data


def digits_images(num_examples: int) -> torch.Tensor:
    """The first ``num_examples`` scikit-learn digits, (N, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images[:num_examples] / 8.0 - 1.0, dtype=torch.float32).unsqueeze(1)


def random_images(num_examples: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Uniform random pixels in [-1, 1] (cost does not depend on the content)."""
    return torch.rand((num_examples, *shape), generator=torch.Generator().manual_seed(seed)) * 2 - 1


def write_random_cifar10(folder: Path, num_examples: int, seed: int = 0) -> Path:
    """CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``) of random pixels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = np.array_split(np.arange(num_examples), 5)
    for number, part in enumerate(parts, start=1):
        data = rng.integers(0, 256, (len(part), 3072), dtype=np.uint8)
        batch = {b"data": data, b"labels": [int(i % 10) for i in part], b"batch_label": b"random"}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
    test = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names, b"num_vis": 3072}))
    return folder


@dataclass
class Batch:
    """One batch of examples with their S fixed draws."""

    index: torch.Tensor
    images: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def batches_with_draws(images: torch.Tensor, examples_per_batch: int, num_draws: int, stream: str = "curvature",
                       seed: int = 0, num_timesteps: int = 1000) -> list[Batch]:
    """Split images into batches, each with S seeded (timestep, noise) draws per example."""
    batches = []
    for start in range(0, len(images), examples_per_batch):
        index = torch.arange(start, min(start + examples_per_batch, len(images)))
        timesteps, noise = draw_for_batch(index, num_draws, tuple(images.shape[1:]), num_timesteps, seed, stream)
        batches.append(Batch(index, images[index], timesteps, noise))
    return batches


# ---------------------------------------------------------------------------- measuring


_ON_GPU = False
"""Set by ``configure``: time and measure memory on the GPU."""
_AUTOCAST: str | None = None
"""Set by ``configure``: the device type every stage autocasts to bf16 on (bf16-mixed), or None."""
PRECISIONS = ("32", "bf16-mixed", "tf32")


def configure(device: str = "auto", threads: int | None = None, precision: str = "32") -> torch.device:
    """Pick the device ("auto": the GPU if there is one), CPU threads and precision; returns the device.

    ``bf16-mixed``: every stage runs under ``torch.autocast(bfloat16)`` (lit-attr keeps its sums and
    scores in float32, as with ``--trainer.precision bf16-mixed``); ``tf32``: float32 matmuls and
    convolutions in TF32 on the GPU.
    """
    global _ON_GPU, _AUTOCAST
    if threads:
        torch.set_num_threads(threads)
    chosen = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    _ON_GPU = chosen.type == "cuda"
    if precision not in PRECISIONS:
        raise SystemExit(f"--precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "tf32":
        if not _ON_GPU:
            raise SystemExit("--precision tf32 needs a CUDA device (--device cuda).")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _AUTOCAST = chosen.type if precision == "bf16-mixed" else None
    return chosen


def _precision_context():
    if _AUTOCAST is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_AUTOCAST, dtype=torch.bfloat16)


_BASELINE_MB = 0.0


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise OSError(key)


def _peak_reset() -> None:
    """Start a stage's memory measurement: reset the high-water mark, remember the current use."""
    global _BASELINE_MB
    if _ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _BASELINE_MB = torch.cuda.memory_allocated() / 2**20
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _BASELINE_MB = _status_mb("VmRSS")
    except OSError:
        _BASELINE_MB = 0.0


def _peak_mb() -> float:
    """Peak memory above the stage's start (GPU: allocated by torch; CPU: resident set)."""
    if _ON_GPU:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20 - _BASELINE_MB
    try:
        return _status_mb("VmHWM") - _BASELINE_MB
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - _BASELINE_MB


@dataclass
class StageTime:
    """Best wall and CPU seconds of a stage over its repeats, and its peak memory above its start (MiB)."""

    wall: float = float("inf")
    cpu: float = float("inf")
    peak_mb: float = 0.0
    runs: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The figure ratios use: CPU time on CPU, wall time on GPU."""
        return self.wall if _ON_GPU else self.cpu


def run_stage(fn: Callable[[], object], record: StageTime) -> object:
    """Run ``fn`` once, updating ``record`` with its wall/CPU time and peak memory."""
    _peak_reset()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    with _precision_context():
        result = fn()
    if _ON_GPU:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    record.wall, record.cpu = min(record.wall, wall), min(record.cpu, cpu)
    record.peak_mb = max(record.peak_mb, _peak_mb())
    record.runs.append(wall)
    return result


def interleaved(stages: dict[str, Callable[[], object]], repeats: int = 3, warmup: bool = True) -> dict[str, StageTime]:
    """Time each stage ``repeats`` times, alternating between stages; best of the repeats."""
    if warmup:
        for fn in stages.values():
            with _precision_context():
                fn()
    records = {name: StageTime() for name in stages}
    for _ in range(repeats):
        for name, fn in stages.items():
            run_stage(fn, records[name])
    return records


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    """PASS/FAIL of a figure against its target."""
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "FAIL"


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between matching columns of two (N, Q) matrices."""
    from scipy.stats import spearmanr

    return np.array([spearmanr(a[:, q], b[:, q]).statistic for q in range(a.shape[1])])


def forward_backward_flops(model: UNet2DModel, shape: tuple[int, int, int], rows: int = 2) -> float:
    """FLOPs of one row's forward + backward (parameter and input gradients), from torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(rows, *shape)
    t = torch.randint(0, 1000, (rows,))
    with FlopCounterMode(display=False) as counter:
        model(x, t).sample.square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / rows


def machine_line() -> str:
    """Where the figures come from: CPU/GPU, threads, precision, torch version and the load at the start."""
    try:
        model = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                     if l.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.machine()
    isa = torch.backends.cpu.get_cpu_capability()  # e.g. AVX2 or AVX512: the CPU ratios depend on it
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f"GPU {torch.cuda.get_device_name(0)}; " if _ON_GPU else ""
    precision = "bf16-mixed" if _AUTOCAST else ("tf32" if _ON_GPU and torch.backends.cuda.matmul.allow_tf32 else "32")
    return (f"{gpu}CPU {model} ({isa}), {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; precision "
            f"{precision}; torch {torch.__version__}; load average {load:.1f} at start")


def layer_input_shapes(unet: UNet2DModel, modules: dict, shape: tuple[int, int, int]) -> dict[str, tuple]:
    """Input shape of every K-FAC'd layer for one row."""
    from lit_attr.curvature.capture import LayerCapture

    with torch.no_grad(), LayerCapture(modules) as capture:
        unet(torch.zeros(1, *shape), torch.zeros(1, dtype=torch.long))
    return {name: tuple(capture.inputs[name].shape[1:]) for name in modules}


def kfac_factor_flops(unet: UNet2DModel, modules: dict, shape: tuple[int, int, int]) -> float:
    """FLOPs per row of K-FAC's sums A and G as lit-attr computes them (13 C^2 H W per 3x3 conv for A)."""
    from lit_attr.curvature.conv_gram import conv_plan_for
    from lit_attr.curvature.layers import conv_output_size

    total = 0.0
    for name, in_shape in layer_input_shapes(unet, modules, shape).items():
        module = modules[name]
        if isinstance(module, torch.nn.Conv2d):
            channels, height, width = in_shape
            out_h, out_w = conv_output_size(module, height, width)
            plan = conv_plan_for(module, torch.empty(1, channels, height, width))
            displacements = len(plan.displacements) if module.kernel_size != (1, 1) else 1
            total += 2 * displacements * height * width * channels**2 + 2 * out_h * out_w * module.out_channels**2
        else:
            positions = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
            total += 2 * positions * (in_shape[-1] ** 2 + module.out_features**2)
    return total
