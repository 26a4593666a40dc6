"""Train one model of a benchmark with ``train.py``'s recipe, in this process, through the Lightning Trainer.

The recipe is a ``train.py`` config (``configs/lds/digits_train.yaml``); a run only overrides the data
subset, the number of steps, the seed and the output folder, exactly as a user would on the command line::

    python train.py fit --config <recipe> --data.subset_file <indices.txt> --trainer.max_steps <n> \
        --seed_everything <seed> --trainer.default_root_dir <run_dir>

The seed drives the initialisation *and* every draw of the run: ``seed_everything`` seeds the global
torch generator, from which the shuffling sampler (one draw per epoch) and ``training_step`` (timesteps
and noise) take their numbers. Runs on subsets of equal size with the same seed therefore see the
same minibatch positions, timesteps and noise: they differ only through the data (the ``common``
seeding protocol of ``lit_attr.evaluation.jobs``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lit_attr.constants import MODEL_FILE
from lit_attr.ddpm_module import DDPMModule
from lit_attr.step_checkpoints import SaveAtStepsCallback
from lit_attr.storage import write_atomic


@dataclass(frozen=True)
class TrainingRun:
    """A finished run: the model, its checkpoint and the wall time of ``fit``."""

    module: DDPMModule
    checkpoint: Path
    fit_seconds: float


def train_model(recipe: str | Path, run_dir: str | Path, max_steps: int, seed: int,
                subset_file: str | Path | None = None, extra_args: list[str] | None = None,
                save_steps: Sequence[int] = ()) -> TrainingRun:
    """Fit the DDPM of ``recipe`` for ``max_steps`` steps with ``seed`` and save ``run_dir/model.ckpt``.

    Args:
        recipe: a ``train.py`` YAML config (model, data, trainer settings).
        run_dir: the run folder (trainer ``default_root_dir`` and checkpoint location).
        max_steps: optimiser steps.
        seed: ``seed_everything`` value (initialisation, minibatch order, timesteps, noise).
        subset_file: index file of the training subset (None: all training data).
        extra_args: further ``train.py`` command-line overrides.
        save_steps: optimiser steps after which to save a checkpoint as well, to
            ``run_dir/step_{n}/model.ckpt`` (``callbacks.checkpoint_steps``; a checkpoint ensemble's members).

    Returns:
        The fitted module (on CPU) and the checkpoint path, written last via a temporary file.
    """
    from lit_attr.cli import LitAttrCLI
    from lit_attr.data.datamodules import DiffusionDataModule

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["--config", str(recipe), f"--trainer.max_steps={max_steps}", f"--seed_everything={seed}",
            f"--trainer.default_root_dir={run_dir}"]
    if subset_file is not None:
        args.append(f"--data.subset_file={subset_file}")
    cli = LitAttrCLI(DDPMModule, DiffusionDataModule, run=False, args=args + list(extra_args or []),
                     save_config_callback=None)
    if save_steps:
        cli.trainer.callbacks.append(SaveAtStepsCallback(save_steps, dirpath=str(run_dir)))
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - start
    checkpoint = run_dir / MODEL_FILE
    write_atomic(checkpoint, lambda tmp: cli.trainer.save_checkpoint(tmp, weights_only=True))
    return TrainingRun(cli.model.cpu(), checkpoint, seconds)
