"""``InfluenceModule``: K-FAC influence scores of every training example on every query (eq. 6).

    score[j, q] = grad m(x_q)^T (GGN + damping I)^{-1} grad l(x_j)

with the K-FAC (expand, MC-Fisher) GGN of the mean training loss (eq. 10, 12), the loss and
measurement gradients averaged over S seeded draws (App. G.3), and the damping in the units of
that mean-loss GGN (App. G.4). Query gradients are preconditioned once and stored compressed
(int8 by default, section 3.2 / App. C); ``predict_step`` computes a block of rows of the
(num_train, num_queries) score matrix from one forward+backward over the block's draws.

Sign: a positive score means removing training example j is predicted to *increase* query q's
measurement (its loss), i.e. j made q more probable. Removing a set I of the N examples changes
the measurement by about ``sum_{j in I} score[j, q] / N`` (eq. 5, 6 with epsilon = 1/N).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lit_attr.attribution.gradients import (
    flatten_gradients,
    per_example_gradients,
    per_example_loss_gradients,
    per_example_loss_scores,
)
from lit_attr.attribution.quantize import CompressedRows, QueryCompression, compress
from lit_attr.attribution.queries import QueryConfig, QuerySet, build_queries
from lit_attr.constants import FACTORS_FILE, QUERIES_FILE
from lit_attr.curvature.eigen import KFACEigen, precondition
from lit_attr.curvature.layers import select_kfac_modules
from lit_attr.ddpm_module import as_config
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.fingerprints import dataset_fingerprint, model_hash
from lit_attr.measurements import Measurement, MeasurementSpec, measurement_rows
from lit_attr.pipeline_io import load_ddpm_module
from lit_attr.storage import ScoreStore

log = logging.getLogger(__name__)

TRAIN_STREAM = "train"
"""Stream of the training-gradient draws."""


@dataclass
class MeasurementConfig:
    """What to measure on each query (section 3.3)."""

    measurement: Literal["loss", "elbo", "loss_at_timestep", "trajectory_logprob"] = "loss"
    """loss (default), elbo, loss_at_timestep or trajectory_logprob (generated queries only)."""
    num_draws: int = 64
    """MC draws of the measurement gradient per query."""
    timestep: int | None = None
    """t (0-based) for loss_at_timestep."""


class InfluenceModule(L.LightningModule):
    """Scores all training examples against all queries with K-FAC influence functions.

    Args:
        checkpoint: the trained DDPM: a Lightning checkpoint or a diffusers pipeline folder.
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure.
        queries: where the queries come from (default: 8 generated samples).
        measurement: the measurement whose change is predicted (default: the loss).
        num_draws: S, draws of (timestep, noise) per training example for its loss gradient.
        seed: seed of every draw (training gradients, measurement, curvature unless overridden).
        draw_scheme: stratified (default: stratified timesteps + antithetic noise; it gave the best LDS
            on the digits benchmark, README "Results"), independent (the paper's), or shared (common
            random numbers across examples).
        damping: added to the GGN of the mean loss before inversion (App. G.4).
        query_compression: storage of the preconditioned query gradients: int8, fp16 or none.
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
        query_batch_size: queries whose gradients are computed together.
    """

    def __init__(
        self,
        checkpoint: str,
        output_dir: str = "runs/digits/attribution",
        queries: QueryConfig | None = None,
        measurement: MeasurementConfig | None = None,
        num_draws: int = 16,
        seed: int = 0,
        draw_scheme: Literal["independent", "stratified", "shared", "shared_stratified"] = "stratified",
        damping: float = 1e-8,
        query_compression: Literal["int8", "fp16", "none"] = "int8",
        score_dtype: Literal["float32", "float16"] = "float32",
        top_k: int = 6,
        overwrite: bool = False,
        query_batch_size: int = 16,
    ) -> None:
        super().__init__()
        self.query_config = as_config(queries, QueryConfig)
        self.measurement_config = as_config(measurement, MeasurementConfig)
        if num_draws < 1 or damping < 0 or top_k < 1:
            raise ConfigError(f"Need --model.num_draws >= 1, --model.damping >= 0 and --model.top_k >= 1; "
                              f"got {num_draws}, {damping}, {top_k}.")
        self.checkpoint, self.output_dir = checkpoint, Path(output_dir)
        self.num_draws, self.seed, self.draw_scheme = num_draws, seed, DrawScheme(draw_scheme)
        self.damping, self.query_compression = damping, QueryCompression(query_compression)
        self.score_dtype, self.top_k, self.overwrite = score_dtype, top_k, overwrite
        self.query_batch_size = query_batch_size
        self.measurement_spec = MeasurementSpec(self.measurement_config.measurement, self.measurement_config.num_draws,
                                                seed, self.draw_scheme, self.measurement_config.timestep)
        self.ddpm = load_ddpm_module(checkpoint)
        self.ddpm.requires_grad_(False)
        self.kfac_modules = select_kfac_modules(self.ddpm.attribution_unet)
        self.eigen: KFACEigen | None = None
        self.query_rows: CompressedRows | None = None
        self.needs_curvature = True
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ identity
    @property
    def default_factors_path(self) -> Path:
        return self.output_dir / "factors" / FACTORS_FILE

    def curvature_identity(self) -> dict[str, Any]:
        """Model and data the curvature belongs to (stored with the factors, compared on load)."""
        return {"model_hash": self._model_hash, "data": self._data_fingerprint}

    def run_metadata(self) -> dict[str, Any]:
        """Everything the scores depend on; compared when a run is resumed."""
        callback = self._curvature_callback()
        curvature = callback.settings(seed=callback.resolved_seed(self), scheme=callback.resolved_scheme(self))
        return {
            "method": "kfac_influence", "checkpoint": str(self.checkpoint), **self.curvature_identity(),
            "queries": {"source": self.queries.source, "hash": self.queries.fingerprint(),
                        "config": asdict(self.query_config)},
            "measurement": {**asdict(self.measurement_config), "measurement": self.measurement_spec.measurement.value},
            "num_draws": self.num_draws, "seed": self.seed, "draw_scheme": self.draw_scheme.value,
            "damping": self.damping, "query_compression": self.query_compression.value, "curvature": curvature,
        }

    def _curvature_callback(self) -> Any:
        from callbacks.curvature import KFACCallback

        found = [cb for cb in self.trainer.callbacks if isinstance(cb, KFACCallback)]
        if not found:
            raise ConfigError("No curvature: add `- class_path: callbacks.curvature.KFACCallback` to trainer.callbacks.")
        return found[0]

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        """Check the data, build the queries, and prepare (or resume) the score store."""
        datamodule = self.trainer.datamodule
        if tuple(datamodule.image_shape) != tuple(self.ddpm.image_shape):
            raise ConfigError(f"The model was trained on images of shape {tuple(self.ddpm.image_shape)} but the data "
                              f"has {tuple(datamodule.image_shape)}: pass the training data's --data.* arguments.")
        dataset = datamodule.dataset
        self._model_hash = model_hash(self.ddpm.attribution_unet)
        self._data_fingerprint = dataset_fingerprint(dataset)
        self.queries = self._load_or_build_queries(dataset)
        self.row_of = {int(index): row for row, index in enumerate(dataset.indices)}
        self.store = ScoreStore(self.output_dir, len(dataset), self.num_score_columns(), self.run_metadata(),
                                self.score_dtype)
        self.store.check(overwrite=self.overwrite)  # every rank raises the same mismatch error, before any write
        if self.trainer.is_global_zero:
            self.store.prepare(overwrite=self.overwrite)
            self.queries.save(self.output_dir / QUERIES_FILE)
            np.save(self.output_dir / "train_indices.npy", np.asarray(dataset.indices, dtype=np.int64))
        self.trainer.strategy.barrier("store_prepared")
        done_rows = self.store.done_indices()
        datamodule.exclude_indices = [int(dataset.indices[row]) for row in done_rows]
        self.needs_curvature = len(done_rows) < len(dataset)
        if not self.needs_curvature:
            log.info("All %d rows of %s are already scored.", len(dataset), self.output_dir)

    def num_score_columns(self) -> int:
        """Columns of the score matrix: one per query."""
        return len(self.queries.images)

    def _load_or_build_queries(self, dataset: Any) -> QuerySet:
        path = self.output_dir / QUERIES_FILE
        if path.exists() and not self.overwrite:
            return QuerySet.load(path)
        needs_trajectory = self.measurement_spec.measurement is Measurement.TRAJECTORY_LOGPROB
        return build_queries(self.query_config, self.ddpm, dataset, record_trajectory=needs_trajectory)

    def set_curvature(self, eigen: KFACEigen) -> None:
        """Called by ``KFACCallback`` with the (EK-)FAC eigendecomposition."""
        self.eigen = eigen

    # ------------------------------------------------------------------ queries
    def on_predict_start(self) -> None:
        """Precondition the query gradients once (after ``KFACCallback`` set the curvature)."""
        if not self.needs_curvature:
            return
        if self.eigen is None:
            raise RuntimeError("KFACCallback did not provide the curvature.")
        start = time.perf_counter()
        with self.trainer.precision_plugin.forward_context():  # as predict_step: bf16-mixed autocasts
            preconditioned = self.preconditioned_query_gradients()
        self.query_rows = compress(preconditioned, self.query_compression)
        self.timings["queries_s"] = time.perf_counter() - start

    def query_gradients(self) -> dict[str, Tensor]:
        """Measurement gradients of all queries: name -> (Q, out, in+1)."""
        unet = self.ddpm.attribution_unet
        images = self.queries.images.to(self.device)
        trajectory = None if self.queries.trajectory is None else self.queries.trajectory.to(self.device)
        timesteps = self.queries.timesteps
        parts = []
        for start in range(0, len(images), self.query_batch_size):
            idx = torch.arange(start, min(start + self.query_batch_size, len(images)))
            traj = None if trajectory is None else trajectory[:, idx]

            def rows(idx: Tensor = idx, traj: Tensor | None = traj) -> Tensor:
                return measurement_rows(self.measurement_spec, unet_eps_model(unet), self.ddpm.schedule,
                                        images[idx].clone(), idx, traj, timesteps)

            parts.append(per_example_gradients(unet, self.kfac_modules, rows, len(idx), self.measurement_spec.num_draws))
        return {name: torch.cat([p[name] for p in parts]) for name in self.kfac_modules}

    def preconditioned_query_gradients(self) -> Tensor:
        """``(GGN + damping I)^{-1} grad m(x_q)`` flattened: (Q, num_params)."""
        return flatten_gradients(precondition(self.query_gradients(), self.eigen, self.damping))

    # ------------------------------------------------------------------ training rows
    def training_draws(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> tuple[Tensor, Tensor]:
        """The S seeded (timestep, noise) draws of each example of the batch: (B, S) and (B, S, C, H, W)."""
        x0 = batch["image"]
        return draw_for_batch(batch["index"].cpu(), self.num_draws, tuple(x0.shape[1:]),
                              self.ddpm.schedule.num_timesteps, self.seed, stream, self.draw_scheme)

    def training_gradients(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Per-example loss gradients averaged over S draws (stream ``train``): (B, num_params)."""
        timesteps, noise = self.training_draws(batch, stream)
        grads = per_example_loss_gradients(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                           self.kfac_modules, batch["image"], timesteps, noise,
                                           self.ddpm.attribution_unet)
        return flatten_gradients(grads)

    def training_scores(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Scores of the batch's examples against the stored queries, layer by layer: (B, num_queries).

        Equal to ``score_against(self.query_rows, self.training_gradients(batch, stream))`` without
        forming the (B, num_params) gradient matrix (``per_example_scores``).
        """
        timesteps, noise = self.training_draws(batch, stream)
        return per_example_loss_scores(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                       self.kfac_modules, batch["image"], timesteps, noise, self.query_rows,
                                       self.ddpm.attribution_unet)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """A block of score rows: ``{"index": (B,), "scores": (B, num_queries)}`` (sign: see module docstring)."""
        return {"index": batch["index"], "scores": self.training_scores(batch)}
