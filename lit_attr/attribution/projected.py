"""``ProjectedGradientModule``: randomly projected per-example gradients for TRAK and D-TRAK (App. G.3-G.4;
Zheng et al. 2024).

One ``Trainer.predict`` pass stores, for every training example and each of G draw groups, the randomly
projected gradient of the training function averaged over the group's S draws (group g uses the same
draw stream as ``VariantInfluenceModule``):

- TRAK: the training loss (eq. 2); queries use the measurement gradients (loss, ELBO, ...).
- D-TRAK: the squared output norm ``||eps_theta(x_t, t)||^2`` (pixel mean) for the training examples
  *and* the queries (label ``sqnorm``).

The closed-form scores of ``lit_attr.baselines.trak`` are formed from these features afterwards:
``attribute.py --method trak`` in ``lit_attr.attribution.trak``, the benchmark in
``lit_attr.evaluation.projected``. Normalisation layers are left out as for K-FAC (the same parameter
set is projected).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lit_attr.attribution.gradient_pass import GradientPassModule, group_stream
from lit_attr.attribution.gradients import flatten_gradients, per_example_sqnorm_gradients
from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.memory import RunShape
from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.scoring_module import ScoreDTypeName
from lit_attr.baselines.projection import ProjectionKind, RandomProjector
from lit_attr.constants import METADATA_FILE, QUERY_FEATURES_FILE
from lit_attr.diffusion.draws import DrawSchemeName, draw_for_batch
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.storage import load_scores, read_json

SQNORM = "sqnorm"
TrainingFunctionName = Literal["loss", "sqnorm"]
"""The training function whose gradient is projected: the loss (TRAK) or the squared output norm (D-TRAK)."""


class ProjectedGradientModule(GradientPassModule):
    """Projected per-example gradients (N, G * d_proj) for TRAK / D-TRAK.

    Args:
        checkpoint, output_dir, queries, measurement, num_draws, seed, draw_scheme, score_dtype, top_k, overwrite,
            query_batch_size: as for ``GradientPassModule``.
        training_function: ``loss`` (TRAK) or ``sqnorm`` (D-TRAK).
        measurements: query measurements for TRAK (ignored by D-TRAK, whose queries use ``sqnorm``).
        projection_dim: d_proj.
        projection_kind: ``gaussian`` or ``rademacher``.
        projection_seed: seed of the projection matrix.
        num_groups: G, groups of ``num_draws`` draws.
    """

    def __init__(self, checkpoint: str, output_dir: str = "runs/digits/attribution",
                 queries: QueryConfig | None = None, measurement: MeasurementConfig | None = None,
                 num_draws: int = 16, seed: int = 0,
                 draw_scheme: DrawSchemeName = "stratified",
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6, overwrite: bool = False,
                 query_batch_size: int = 16, training_function: TrainingFunctionName = "loss",
                 measurements: list[str] | None = None, projection_dim: int = 4096,
                 projection_kind: ProjectionKind = "gaussian", projection_seed: int = 0,
                 num_groups: int = 2) -> None:
        if training_function not in ("loss", SQNORM):
            raise ConfigError(f"training_function must be loss (TRAK) or sqnorm (D-TRAK); got {training_function!r}.")
        super().__init__(checkpoint, output_dir, queries, measurement, num_draws, seed, draw_scheme, score_dtype,
                         top_k, overwrite, query_batch_size)
        self.training_function, self.num_groups = training_function, num_groups
        self.measurements = [SQNORM] if training_function == SQNORM else list(measurements or ["loss"])
        num_params = sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
                         for m in self.kfac_modules.values())
        self.projector = RandomProjector(num_params, projection_dim, projection_seed, projection_kind)
        self.projection = {"dim": projection_dim, "kind": projection_kind, "seed": projection_seed}

    def num_score_columns(self) -> int:
        return self.num_groups * self.projector.dim

    def run_metadata(self) -> dict[str, Any]:
        return {"method": "trak" if self.training_function == "loss" else "dtrak", "checkpoint": str(self.checkpoint),
                **self.identity(), "queries": {"source": self.queries.source, "hash": self.queries.fingerprint()},
                "measurements": self.measurements, "num_draws": self.num_draws, "num_groups": self.num_groups,
                "seed": self.seed, "draw_scheme": self.draw_scheme.value,
                "measurement": {"num_draws": self.measurement_config.num_draws}, "projection": self.projection}

    def run_shape(self, batch_size: int) -> RunShape:
        """The gradient pass's sizes (query gradients in float32 until they are projected) and the projection matrix."""
        return replace(super().run_shape(batch_size), projection_bytes=self.projector.resident_bytes)

    def on_predict_start(self) -> None:
        """Project the query gradients once: ``query_features.pt`` = {measurement: (Q, d_proj)}."""
        path = self.store_dir / QUERY_FEATURES_FILE
        if not self.rows_remaining or path.exists() or not self.trainer.is_global_zero:
            return
        features = {}
        for name in self.measurements:
            if name == SQNORM:
                grads = self._sqnorm_query_gradients()
            else:
                grads = self.query_gradients(self.measurement_spec_for(name))
            features[name] = self.projector.project(flatten_gradients(grads))
        torch.save(features, path)

    def _sqnorm_query_gradients(self) -> dict[str, Tensor]:
        images = self.queries.images.to(self.device)
        index = torch.arange(len(images))
        return self._sqnorm_gradients(images, index, self.measurement_config.num_draws, "query")

    def _sqnorm_gradients(self, x0: Tensor, index: Tensor, num_draws: int, stream: str) -> dict[str, Tensor]:
        """Per-example gradients of the mean over S draws of ``||eps_theta(x_t, t)||^2`` (pixel mean)."""
        unet = self.ddpm.attribution_unet
        t, noise = draw_for_batch(index.cpu(), num_draws, tuple(x0.shape[1:]), self.ddpm.schedule.num_timesteps,
                                  self.seed, stream, self.draw_scheme)
        return per_example_sqnorm_gradients(unet_eps_model(unet), self.ddpm.schedule, self.kfac_modules, x0, t, noise,
                                            unet)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """``{"index": (B,), "scores": (B, G * d_proj)}``: projected gradients, group-major."""
        blocks = []
        for g in range(self.num_groups):
            if self.training_function == SQNORM:
                grads = flatten_gradients(self._sqnorm_gradients(batch["image"], batch["index"], self.num_draws,
                                                                 group_stream(g)))
            else:
                grads = self.training_gradients(batch, group_stream(g))
            blocks.append(self.projector.project(grads))
        return {"index": batch["index"], "scores": torch.cat(blocks, dim=1)}


def load_projected_features(folder: str | Path) -> tuple[Tensor, dict[str, Tensor]]:
    """The features of a finished pass in ``folder``: training (N, G, d_proj) float64 and the query features
    {measurement: (Q, d_proj)}."""
    folder = Path(folder)
    meta = read_json(folder / METADATA_FILE)
    features = torch.from_numpy(np.asarray(load_scores(folder))).view(-1, meta["num_groups"], meta["projection"]["dim"])
    return features.double(), torch.load(folder / QUERY_FEATURES_FILE, weights_only=True)
