"""``ExportPipelineCallback``: save the trained model as a diffusers pipeline folder when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_attr.pipeline_io import export_pipeline


DEFAULT_FOLDER = "pipeline"
"""Sub-folder of the run folder that receives the export unless the module names another (``EXPORT_FOLDER``)."""


class ExportPipelineCallback(L.Callback):
    """Write a diffusers pipeline folder at the end of ``fit``: ``DDPMPipeline`` (unet/ + scheduler/), for a latent
    DDPM an ``LDMPipeline`` (+ vqvae/, the AutoencoderKL); for a ``VAEModule`` the VAE folder itself.

    Args:
        dirpath: the folder (None: ``<trainer.default_root_dir>/pipeline`` in the run folder; a module's
            ``EXPORT_FOLDER`` replaces ``pipeline``, e.g. ``vae`` for a ``VAEModule``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            folder = getattr(pl_module, "EXPORT_FOLDER", DEFAULT_FOLDER)
            target = self.dirpath or Path(trainer.default_root_dir) / folder
            if hasattr(pl_module, "export"):  # VAEModule: calibrates its latent scaling on the training data first
                path = pl_module.export(target, trainer.train_dataloader.dataset)
            else:
                path = export_pipeline(pl_module, target)
            print(f"Exported diffusers model to {path}")
