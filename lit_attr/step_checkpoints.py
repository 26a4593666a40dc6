"""``SaveAtStepsCallback``: weights-only checkpoints at chosen optimiser steps (late checkpoints of one run)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L

from lit_attr.constants import MODEL_FILE
from lit_attr.storage import write_atomic


def step_checkpoint(dirpath: str | Path, step: int) -> Path:
    """``<dirpath>/step_{step}/model.ckpt``: the checkpoint taken after optimiser step ``step``."""
    return Path(dirpath) / f"step_{step}" / MODEL_FILE


class SaveAtStepsCallback(L.Callback):
    """Save the weights after each of ``steps`` optimiser steps to ``step_checkpoint(dirpath, step)``, atomically.

    The checkpoints of one training run's second half are the members of a checkpoint ensemble (scores averaged over
    them, as TRAK averages over checkpoints; README "Results": spread checkpoints at 40%, 60% and 80% of the run
    measured best). In YAML::

        trainer:
          callbacks:
            - class_path: callbacks.checkpoint_steps.SaveAtStepsCallback
              init_args: {fractions: [0.4, 0.6, 0.8]}      # or {steps: [600, 900, 1200], dirpath: runs/digits}

    Args:
        steps: positive optimiser steps (``trainer.global_step`` after the step), distinct.
        fractions: instead of ``steps``, fractions in (0, 1] of ``trainer.max_steps``, each rounded to a step (at
            least 1; fractions that round to the same step save it once).
        dirpath: the folder of the ``step_{n}/`` sub-folders (None: ``trainer.default_root_dir``).
    """

    def __init__(self, steps: Sequence[int] | None = None, fractions: Sequence[float] | None = None,
                 dirpath: str | None = None) -> None:
        if (steps is None) == (fractions is None):
            raise ValueError("SaveAtStepsCallback: give either steps (optimiser steps) or fractions (of "
                             "trainer.max_steps), not both and not neither.")
        if steps is not None:
            steps = [int(s) for s in steps]
            if not steps or min(steps) < 1 or len(set(steps)) < len(steps):
                raise ValueError(f"SaveAtStepsCallback: steps={steps} must be distinct positive optimiser steps.")
            self.steps = sorted(steps)
        else:
            fractions = [float(f) for f in fractions]
            if not fractions or not all(0.0 < f <= 1.0 for f in fractions):
                raise ValueError(f"SaveAtStepsCallback: fractions={fractions} must be in (0, 1], e.g. [0.4, 0.6, 0.8].")
            self.steps = []  # resolved against trainer.max_steps when fitting starts
        self.fractions = fractions
        self.dirpath = dirpath
        self._saved: set[int] = set()  # with gradient accumulation several batches end at the same global step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        max_steps = trainer.max_steps
        if self.fractions is not None:
            if max_steps is None or max_steps < 1:
                raise ValueError("SaveAtStepsCallback: fractions need a finite trainer.max_steps; set "
                                 "--trainer.max_steps or give steps instead.")
            self.steps = sorted({max(1, round(f * max_steps)) for f in self.fractions})
        if max_steps is not None and 0 < max_steps < self.steps[-1]:
            raise ValueError(f"SaveAtStepsCallback: step {self.steps[-1]} is beyond trainer.max_steps="
                             f"{max_steps}; ask for steps up to max_steps.")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step in self.steps and step not in self._saved:
            self._saved.add(step)
            path = step_checkpoint(self.dirpath or trainer.default_root_dir, step)
            if trainer.is_global_zero:  # every rank calls save_checkpoint (it holds a barrier); rank 0 writes
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, lambda tmp: trainer.save_checkpoint(tmp, weights_only=True))
            else:
                trainer.save_checkpoint(path, weights_only=True)
