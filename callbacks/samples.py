"""``SampleGridCallback``: sample grids to TensorBoard during training and a PNG at the end."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lit_attr.visualize import log_grid, save_grid


class SampleGridCallback(L.Callback):
    """Generate samples from the EMA weights every ``every_n_steps`` and when training ends.

    Args:
        every_n_steps: logging period in optimizer steps (0: only at the end).
        num_samples: images per grid.
        num_sampling_steps: sampler steps for the periodic grids (None: all T).
        final_num_sampling_steps: sampler steps for the final grid (None: the full T-step sampler).
        seed: sampling seed (sample i always gets the same noise).
        filename: PNG written at the end of training.
        dirpath: folder of that PNG (None: ``trainer.default_root_dir``, the run folder).
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 64,
        num_sampling_steps: int | None = 100,
        final_num_sampling_steps: int | None = None,
        seed: int = 0,
        filename: str = "samples.png",
        dirpath: str | None = None,
    ) -> None:
        self.dirpath = dirpath
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.num_sampling_steps = num_sampling_steps
        self.final_num_sampling_steps = final_num_sampling_steps
        self.seed = seed
        self.filename = filename

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        result = pl_module.generate(self.num_samples, seed=self.seed, num_steps=self.num_sampling_steps)
        log_grid(trainer.logger, "samples", pl_module.to_pixels(result.images), step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        result = pl_module.generate(self.num_samples, seed=self.seed, num_steps=self.final_num_sampling_steps)
        images = pl_module.to_pixels(result.images)  # decoded, for a latent model
        log_grid(trainer.logger, "samples_final", images, trainer.global_step)
        out_dir = Path(self.dirpath or trainer.default_root_dir)
        path = save_grid(images, out_dir / self.filename)
        print(f"Wrote {self.num_samples} samples to {path}")
