"""``attribute.py --method trak`` / ``dtrak``: TRAK and D-TRAK scores of every training example on every query.

The projected per-example gradients (``ProjectedGradientModule``, one draw group of S draws) stream into
``<output_dir>/features/`` (resumable like the influence rows); ``finish`` then writes the closed form
(``lit_attr.baselines.trak``, App. G.4) into ``<output_dir>/scores.npy`` (N, Q)::

    score[j, q] = phi_q^T (Phi^T Phi / N + lambda I)^{-1} phi_j

Sign: higher means training example j is predicted to be more helpful to query q (the benchmark's
convention; the sign of influence's "positive: removing j raises q's loss").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.projected import SQNORM, ProjectedGradientModule, load_projected_features
from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.scoring_module import ScoreDTypeName
from lit_attr.baselines.projection import ProjectionKind
from lit_attr.baselines.trak import trak_scores
from lit_attr.constants import FEATURES_DIR, FINALIZED_KEY
from lit_attr.ddpm_config import as_config
from lit_attr.diffusion.draws import DrawSchemeName
from lit_attr.errors import ConfigError
from lit_attr.storage import read_metadata
from lit_attr.validation import number

TRAK_DEFAULT_DAMPING = 1e-9
"""The benchmark's default damping of TRAK and D-TRAK (the first of their sweep in ``configs/lds/digits.yaml``)."""


class TRAKModule(ProjectedGradientModule):
    """TRAK (Park et al. 2023) on the training loss; query features from the measurement's gradients.

    Args:
        checkpoint: the trained DDPM: a Lightning checkpoint or a diffusers pipeline folder.
        output_dir: run folder for scores.npy, metadata.json, queries, report and figure (features in ``features/``).
        queries: where the queries come from (default: 8 generated samples).
        measurement: the query function whose projected gradient is the query feature (default: the loss).
        num_draws: S, draws of (timestep, noise) per training example.
        seed: seed of every draw.
        draw_scheme: how the draws are made: stratified (default), independent, shared or shared_stratified.
        damping: lambda of the closed form, in the units of the mean-loss GGN (App. G.4; 0: pseudo-inverse).
        projection_dim: d_proj of the random projection (the paper used 32768).
        projection_kind: entries of the projection matrix: gaussian or rademacher.
        projection_seed: seed of the projection matrix.
        score_dtype: dtype of scores.npy.
        top_k: training examples per kind (positive, negative, neutral) in the report and figure.
        overwrite: discard an existing run in ``output_dir`` made with other settings.
        query_batch_size: queries whose gradients are computed together.
    """

    training_function: ClassVar[str] = "loss"

    def __init__(self, checkpoint: str, output_dir: str = "runs/digits/attribution",
                 queries: QueryConfig | None = None, measurement: MeasurementConfig | None = None,
                 num_draws: int = 16, seed: int = 0,
                 draw_scheme: DrawSchemeName = "stratified",
                 damping: float = TRAK_DEFAULT_DAMPING, projection_dim: int = 4096,
                 projection_kind: ProjectionKind = "gaussian", projection_seed: int = 0,
                 score_dtype: ScoreDTypeName = "float32", top_k: int = 6, overwrite: bool = False,
                 query_batch_size: int = 16) -> None:
        measurement = as_config(measurement, MeasurementConfig)
        self.check_measurement(measurement)
        self.damping = number(damping, "--model.damping", low=0.0)
        super().__init__(checkpoint, output_dir, queries, measurement, num_draws, seed, draw_scheme, score_dtype, top_k,
                         overwrite, query_batch_size, training_function=self.training_function,
                         measurements=[measurement.measurement],
                         projection_dim=projection_dim, projection_kind=projection_kind,
                         projection_seed=projection_seed, num_groups=1)

    def check_measurement(self, measurement: MeasurementConfig) -> None:
        """TRAK's query features may use any measurement."""

    @property
    def store_dir(self) -> Path:
        return self.output_dir / FEATURES_DIR

    def run_metadata(self) -> dict[str, Any]:
        """The feature pass's settings (the query settings and the measurement's timestep included)."""
        return {**super().run_metadata(), "queries": self.query_identity(),
                "measurement": self.measurement_identity()}

    def scores_metadata(self) -> dict[str, Any]:
        """What ``scores.npy`` depends on: the feature pass and the damping."""
        return {**self.run_metadata(), "damping": self.damping}

    def setup(self, stage: str) -> None:
        """Prepare the feature store, then the score store (a changed damping is refused before any work)."""
        super().setup(stage)
        self.scores_store = self.prepare_store(self.output_dir, len(self.queries.images), self.scores_metadata())

    def finish(self) -> None:
        """The closed-form scores (N, Q) from the finished features, into ``output_dir`` (once)."""
        if read_metadata(self.output_dir).get(FINALIZED_KEY):
            return
        features, queries = load_projected_features(self.store_dir)  # (N, 1, d), {name: (Q, d)}
        scores = trak_scores(features[:, 0], queries[self.measurements[0]], [self.damping])[0]
        self.scores_store.open()
        self.scores_store.write_rows(np.arange(len(scores)), scores.numpy())
        self.scores_store.finalize()


class DTRAKModule(TRAKModule):
    """D-TRAK (Zheng et al. 2024): TRAK on the squared output norm ``||eps_theta(x_t, t)||^2`` for training examples
    and queries alike (``measurement.num_draws`` sets the draws of the query features; its ``measurement`` must
    stay ``loss``, the default, as D-TRAK has no query measurement)."""

    training_function = SQNORM

    def check_measurement(self, measurement: MeasurementConfig) -> None:
        if measurement.measurement != "loss" or measurement.timestep is not None:
            raise ConfigError("--method dtrak uses the squared output norm for the queries: drop "
                              "--model.measurement.measurement / timestep (only measurement.num_draws applies).")
