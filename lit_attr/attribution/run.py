"""The attribution run: score every training example (``Trainer.predict``), then write the outputs."""

from __future__ import annotations

import time

import lightning as L

from lit_attr.attribution.outputs import write_attribution_outputs
from lit_attr.attribution.scoring_module import ScoringModule
from lit_attr.data.datamodules import AttributionDataModule


def run_attribution(trainer: L.Trainer, module: ScoringModule, datamodule: AttributionDataModule) -> None:
    """Streamed scoring (after the curvature and preconditioned queries, for K-FAC), the method's last step
    (``finish``: TRAK's closed form), then the report and figure of ``output_dir/scores.npy``."""
    start = time.perf_counter()
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    if trainer.is_global_zero:
        module.finish()
        paths = write_attribution_outputs(module.output_dir, datamodule.dataset, module.queries.pixels,
                                          module.top_k, trainer.logger)
        print(f"Scored {module.store.num_train} training examples x {len(module.queries.images)} queries in "
              f"{time.perf_counter() - start:.1f} s.")
        for kind, path in paths.items():
            print(f"  {kind}: {path}")
