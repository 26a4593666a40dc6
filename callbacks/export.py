"""``ExportPipelineCallback``: save the trained model as a diffusers pipeline folder when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_attr.pipeline_io import export_pipeline


class ExportPipelineCallback(L.Callback):
    """Write a diffusers ``DDPMPipeline`` folder (unet/ + scheduler/) at the end of ``fit``.

    Args:
        dirpath: the folder (None: ``<trainer.default_root_dir>/pipeline``, the run folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            target = self.dirpath or Path(trainer.default_root_dir) / "pipeline"
            path = export_pipeline(pl_module, target)
            print(f"Exported diffusers pipeline to {path}")
