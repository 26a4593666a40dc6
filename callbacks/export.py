"""``ExportPipelineCallback``: save the trained model as a diffusers pipeline folder when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_attr.pipeline_io import export_pipeline


class ExportPipelineCallback(L.Callback):
    """Write a diffusers pipeline folder at the end of ``fit``: ``DDPMPipeline`` (unet/ + scheduler/), for a latent
    DDPM an ``LDMPipeline`` (+ vqvae/, the AutoencoderKL); for a ``VAEModule`` the VAE folder itself.

    Args:
        dirpath: the folder (None: ``<log dir>/pipeline``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            target = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "pipeline"
            if hasattr(pl_module, "export"):  # VAEModule: calibrates its latent scaling on the training data first
                path = pl_module.export(target, trainer.train_dataloader.dataset)
            else:
                path = export_pipeline(pl_module, target)
            print(f"Exported diffusers model to {path}")
