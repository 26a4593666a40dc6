"""``ScoreWriter``: writes each predicted block of scores into the run's memory-mapped ScoreStore.

Each rank writes the rows of its own training examples (positions from ``batch["index"]`` mapped
through the dataset), flushes every ``flush_every`` batches, and rank 0 finalises the store
(``"finalized": true`` written last) once every row is done.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_attr.storage import ScoreStore


class ScoreWriter(BasePredictionWriter):
    """Prediction writer for ``InfluenceModule``: predictions are ``{"index": (B,), "scores": (B, Q)}``.

    The store (``pl_module.store``) and the map from stable dataset index to score row
    (``pl_module.row_of``) come from the module, which prepares them in ``setup``.

    Args:
        flush_every: batches between flushes (a crash loses at most this many batches).
    """

    def __init__(self, flush_every: int = 10) -> None:
        super().__init__(write_interval="batch")
        self.flush_every = flush_every
        self._since_flush = 0
        self.store: ScoreStore | None = None
        self.positions: dict[int, int] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.store, self.positions = pl_module.store, pl_module.row_of
        self.store.open()

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Any],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        rows = np.array([self.positions[int(i)] for i in prediction["index"].tolist()])
        self.store.write_rows(rows, prediction["scores"].detach().cpu().float().numpy())
        self._since_flush += 1
        if self._since_flush >= self.flush_every:
            self.store.flush()
            self._since_flush = 0

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.store is None:
            return
        self.store.flush()
        trainer.strategy.barrier("scores_written")
        if trainer.is_global_zero:
            self.store.finalize({"num_devices": trainer.world_size})
        trainer.strategy.barrier("scores_finalized")
