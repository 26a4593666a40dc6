"""Shared helpers for tests: config copies into tmp folders, CLI subprocesses."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark_script(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as a module; its sibling imports (``benchlib``) resolve."""
    benchmarks = ROOT / "benchmarks"
    if str(benchmarks) not in sys.path:
        sys.path.insert(0, str(benchmarks))
    spec = importlib.util.spec_from_file_location(name, benchmarks / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(tmp_path: Path, name: str = "train.yaml", **replacements: str) -> Path:
    """Copy ``configs/tiny/<name>`` into ``tmp_path`` with every ``runs/tiny`` pointing into it."""
    text = (ROOT / "configs" / "tiny" / name).read_text().replace("runs/tiny", str(tmp_path / "run"))
    for old, new in replacements.items():
        text = text.replace(old, new)
    path = tmp_path / name
    path.write_text(text)
    return path


def run_script(*args: str, timeout: int = 600, threads: int = 1) -> subprocess.CompletedProcess:
    """Run a repo script (``train.py``, ``attribute.py``) in a subprocess; fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return proc


def run_scripts_together(*commands: tuple[str, ...], timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Run several read-only repo scripts at once (one torch thread each), in the order given back.

    Their start-up (importing torch and lightning, several seconds each) overlaps instead of adding up."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    running = [subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for args in commands]
    done = []
    for args, proc in zip(commands, running):
        stdout, stderr = proc.communicate(timeout=timeout)
        done.append(subprocess.CompletedProcess([sys.executable, *args], proc.returncode, stdout, stderr))
    return done


def train_tiny_ddpm(root: Path, max_steps: int, ema_decay: float, batch_size: int, **trainer_kwargs: object):
    """Train the tiny U-Net on digits for a few steps in this process; returns (module, trainer)."""
    import lightning as L

    from lit_attr.data.datamodules import DiffusionDataModule
    from lit_attr.ddpm_module import DDPMModule
    from lit_attr.diffusion.unet import tiny_unet_config

    L.seed_everything(0)
    module = DDPMModule(unet=tiny_unet_config(), ema_decay=ema_decay)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, **trainer_kwargs)
    trainer.fit(module, DiffusionDataModule(batch_size=batch_size))
    return module, trainer


def tiny_open_clip(tmp_path: Path):
    """A tiny randomly initialised open_clip model: (config JSON path, weights file, the model in eval mode).

    Exercises the real CLIP code path without downloading anything.
    """
    import json

    import open_clip
    import torch

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    config_path = tmp_path / "tiny-clip-test.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip-test").eval()
    weights = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return config_path, weights, model


def tiny_attribution_run(root: Path, num_train: int) -> Path:
    """A tiny DDPM trained briefly on digits under ``root/run`` (``checkpoints/last.ckpt``) and ``run/subset.txt``
    listing the first ``num_train`` examples: what ``configs/tiny/attribute.yaml`` expects. Returns ``root``."""
    from lit_attr.data.index_files import write_index_file

    _, trainer = train_tiny_ddpm(root, max_steps=15, ema_decay=0.0, batch_size=64, enable_checkpointing=False)
    (root / "run" / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(root / "run" / "checkpoints" / "last.ckpt")
    write_index_file(root / "run" / "subset.txt", range(num_train))
    return root
