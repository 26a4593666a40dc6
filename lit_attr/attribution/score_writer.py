"""``ScoreWriter``: writes each predicted block of scores into the run's memory-mapped ScoreStore.

Each rank writes the rows of its own training examples (positions from ``batch["index"]`` mapped
through the dataset), flushes every ``flush_every`` batches, and rank 0 finalises the store
(``"finalized": true`` written last) once every row is done. The module hands over the store and
its row map as a ``contracts.ScoreTarget``. YAML refers to it as ``callbacks.score_writer.ScoreWriter``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_attr.contracts import ScoreProducer, ScoreTarget
from lit_attr.errors import ConfigError
from lit_attr.storage import ScoreStore


class ScoreWriter(BasePredictionWriter):
    """Prediction writer for a ``contracts.ScoreProducer``: predictions are ``{"index": (B,), "scores": (B, Q)}``.

    The store and the map from stable dataset index to score row come from the module's
    ``score_target()``, prepared in its ``setup``.

    Args:
        flush_every: batches between flushes (a crash loses at most this many batches).
    """

    def __init__(self, flush_every: int = 10) -> None:
        super().__init__(write_interval="batch")
        self.flush_every = flush_every
        self._since_flush = 0
        self.store: ScoreStore | None = None
        self.positions: Mapping[int, int] = {}

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, ScoreProducer):
            raise ConfigError(f"ScoreWriter writes the scores of an attribution module; {type(pl_module).__name__} "
                              "has no score_target() (use attribute.py's --model of a scoring method).")
        self.attach(pl_module.score_target())

    def attach(self, target: ScoreTarget) -> None:
        """Write into ``target.store``, rows placed by ``target.row_of``; opens the store's memmaps."""
        self.store, self.positions = target.store, target.row_of
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
