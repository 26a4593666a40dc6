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

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from lit_attr.attribution.gradient_pass import TRAIN_STREAM, GradientPassModule
from lit_attr.attribution.gradients import flatten_gradients, per_example_loss_scores
from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.memory import RunShape
from lit_attr.attribution.quantize import (
    CompressedRows,
    QueryCompression,
    QueryCompressionName,
    compress,
    concat_compressed,
    score_against,
    with_float_copy,
)
from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.scoring_module import ScoreDTypeName
from lit_attr.contracts import CurvatureRequest
from lit_attr.curvature.callback import KFACCallback
from lit_attr.curvature.eigen import KFACEigen, precondition
from lit_attr.curvature.factors_io import factors_path
from lit_attr.curvature.layers import gradient_shapes
from lit_attr.diffusion.draws import DrawSchemeName
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.validation import check_finite, number

__all__ = ["InfluenceModule", "MeasurementConfig"]

CURVATURE_CAUSE = ("the curvature's eigenvalues or the damping make the inverse overflow: raise --model.damping, or "
                   "refit the curvature with --model.overwrite true")
SCORE_CAUSE = "the scores overflow float32: raise --model.damping or use --model.query_compression fp16/none"


class InfluenceModule(GradientPassModule):
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
        float_query_cache_mib: keep a float32 copy of an int8/fp16 query store while it takes at most this many
            MiB (Q x D x 4 bytes; 1000 queries of the digits model: 670 MiB), so the scoring pass reads the float32
            columns instead of converting the store once per batch; the scores are the same. 0: never.
        relative_influence: divide each training example's scores by the norm of its loss gradient,
            ``score[j, q] / ||grad L(x_j)||`` (relative influence, cf. RelatIF, Barshan et al. 2020): ranks examples by
            how much of their gradient points at the query rather than by its size. Not eq. 6 any more (no
            predicted change of the measurement); an option, measured in README "Results".
    """

    def __init__(
        self,
        checkpoint: str,
        output_dir: str = "runs/digits/attribution",
        queries: QueryConfig | None = None,
        measurement: MeasurementConfig | None = None,
        num_draws: int = 16,
        seed: int = 0,
        draw_scheme: DrawSchemeName = "stratified",
        damping: float = 1e-8,
        query_compression: QueryCompressionName = "int8",
        score_dtype: ScoreDTypeName = "float32",
        top_k: int = 6,
        overwrite: bool = False,
        query_batch_size: int = 16,
        relative_influence: bool = False,
        float_query_cache_mib: float = 1024,
    ) -> None:
        self.relative_influence = bool(relative_influence)
        self.float_query_cache_bytes = int(number(float_query_cache_mib, "--model.float_query_cache_mib", low=0.0)
                                           * 2**20)
        self.damping = number(damping, "--model.damping", low=0.0)
        self.query_compression = QueryCompression(query_compression)
        super().__init__(checkpoint, output_dir, queries, measurement, num_draws, seed, draw_scheme, score_dtype,
                         top_k, overwrite, query_batch_size)
        self.eigen: KFACEigen | None = None
        self.query_rows: CompressedRows | None = None
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ identity
    def run_metadata(self) -> dict[str, Any]:
        """Everything the scores depend on; compared when a run is resumed."""
        callback = self._curvature_callback()
        curvature = callback.settings(seed=callback.resolved_seed(self.seed),
                                      scheme=callback.resolved_scheme(self.draw_scheme))
        return {
            "method": "kfac_influence", "checkpoint": str(self.checkpoint), **self.identity(),
            "queries": self.query_identity(),
            "measurement": self.measurement_identity(),
            "num_draws": self.num_draws, "seed": self.seed, "draw_scheme": self.draw_scheme.value,
            "damping": self.damping, "query_compression": self.query_compression.value, "curvature": curvature,
            **({"relative_influence": True} if self.relative_influence else {}),  # runs made before it existed resume
        }

    def _curvature_callback(self, required: bool = True) -> KFACCallback | None:
        """The trainer's ``KFACCallback`` (None if absent and not ``required``: the memory estimate runs first)."""
        found = [cb for cb in self.trainer.callbacks if isinstance(cb, KFACCallback)]
        if not found and required:
            raise ConfigError("No curvature: add `- class_path: callbacks.curvature.KFACCallback` to trainer.callbacks.")
        return found[0] if found else None

    def run_shape(self, batch_size: int) -> RunShape:
        """The gradient pass's sizes plus the curvature and the compressed query store."""
        shapes = gradient_shapes(self.kfac_modules)
        return replace(super().run_shape(batch_size),
                       curvature_entries=sum(out * out + cols * cols for out, cols in shapes.values()),
                       curvature_draws=getattr(self._curvature_callback(required=False), "num_draws", 0),
                       query_compression=self.query_compression.value,
                       float_query_cache_bytes=self.float_query_cache_bytes)

    def curvature_request(self) -> CurvatureRequest | None:
        """The curvature ``KFACCallback`` provides before predicting (``contracts.CurvatureConsumer``);
        None when every row is already scored."""
        if not self.rows_remaining:
            return None
        return CurvatureRequest(unet=self.ddpm.attribution_unet, schedule=self.ddpm.schedule,
                                factors_path=factors_path(self.output_dir), identity=self.identity(),
                                seed=self.seed, draw_scheme=self.draw_scheme, refit=self.overwrite,
                                data=self.trainer.datamodule.curvature_dataloader)

    def set_curvature(self, eigen: KFACEigen) -> None:
        """Called by ``KFACCallback`` with the (EK-)FAC eigendecomposition."""
        self.eigen = eigen

    # ------------------------------------------------------------------ queries
    def on_predict_start(self) -> None:
        """Precondition the query gradients once (after ``KFACCallback`` set the curvature)."""
        if not self.rows_remaining:
            return
        if self.eigen is None:
            raise RuntimeError("KFACCallback did not provide the curvature.")
        start = time.perf_counter()
        blocks = []
        with self.trainer.precision_plugin.forward_context():  # as predict_step: bf16-mixed autocasts
            for rows in self.preconditioned_query_blocks():
                check_finite({"preconditioned query gradients": rows}, "query preconditioning", CURVATURE_CAUSE)
                blocks.append(compress(rows, self.query_compression))
        self.query_rows = with_float_copy(concat_compressed(blocks), self.float_query_cache_bytes)
        self.timings["queries_s"] = time.perf_counter() - start

    def preconditioned_query_blocks(self) -> Iterator[Tensor]:
        """Rows of ``preconditioned_query_gradients``, ``query_batch_size`` queries at a time (bounded memory)."""
        for grads in self.query_gradient_blocks():
            yield flatten_gradients(precondition(grads, self.eigen, self.damping))

    def preconditioned_query_gradients(self) -> Tensor:
        """``(GGN + damping I)^{-1} grad m(x_q)`` flattened: (Q, num_params)."""
        return torch.cat(list(self.preconditioned_query_blocks()))

    # ------------------------------------------------------------------ training rows
    def training_scores(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """Scores of the batch's examples against the stored queries, layer by layer: (B, num_queries).

        Equal to ``score_against(self.query_rows, self.training_gradients(batch, stream))`` without
        forming the (B, num_params) gradient matrix (``per_example_scores``).
        """
        timesteps, noise = self.training_draws(batch, stream)
        return per_example_loss_scores(unet_eps_model(self.ddpm.attribution_unet), self.ddpm.schedule,
                                       self.kfac_modules, batch["image"], timesteps, noise, self.query_rows,
                                       self.ddpm.attribution_unet, batch.get("label"))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """A block of score rows: ``{"index": (B,), "scores": (B, num_queries)}`` (sign: see module docstring)."""
        if self.relative_influence:
            return {"index": batch["index"], "scores": self.relative_scores(batch)}
        scores = self.training_scores(batch)
        if not bool(torch.isfinite(scores).all()):  # the layer-wise pass never forms the gradients: name the cause
            self.training_gradients(batch)  # raises (naming the layer) if the gradients themselves are not finite
            check_finite({"scores": scores}, f"scoring of examples {batch['index'][:3].tolist()}...", SCORE_CAUSE)
        return {"index": batch["index"], "scores": scores}

    def relative_scores(self, batch: dict[str, Tensor], stream: str = TRAIN_STREAM) -> Tensor:
        """``score[j, q] / ||grad L(x_j)||`` (``relative_influence``): (B, num_queries), from the formed gradients."""
        grads = self.training_gradients(batch, stream)
        scores = score_against(self.query_rows, grads) / grads.norm(dim=1, keepdim=True).clamp_min(1e-30)
        check_finite({"scores": scores}, f"scoring of examples {batch['index'][:3].tolist()}...", SCORE_CAUSE)
        return scores
