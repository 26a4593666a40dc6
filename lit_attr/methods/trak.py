"""``TRAK`` and ``DTRAK``: randomly projected per-example gradients in one pass (``ProjectedGradientModule``),
then the closed form ``phi (phi^T phi + lambda I)^-1 phi_q`` per reported number of draws and damping; with
``ensemble_seeds`` / ``ensemble_steps`` the same for every member, the closed forms averaged."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import numpy as np

from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.score_writer import ScoreWriter
from lit_attr.constants import FINALIZED_KEY, METADATA_FILE, TRAK_SCORES_FILE
from lit_attr.attribution.projected import SQNORM, ProjectedGradientModule
from lit_attr.evaluation.projected import finish_projected_scores, finished_closed_form
from lit_attr.methods.base import AttributionMethod, ScoreSet, ScoringInputs, attribution_data
from lit_attr.storage import read_json


class TRAK(AttributionMethod):
    """TRAK on the training loss (Park et al. 2023): query features from the measurements' gradients."""

    kind = "trak"
    attribute_module = "lit_attr.attribution.trak.TRAKModule"
    training_function: ClassVar[str] = "loss"

    def measurement_labels(self) -> list[str]:
        """Functions whose projected gradients the query features are (axis 1 of the scores)."""
        return list(self.config.measurements)

    def wanted_settings(self) -> dict[str, Any]:
        """Settings of the stored projection pass. Dampings and report_draws are not among them: they only enter
        the closed form, recomputed from the stored projected gradients when they change."""
        m = self.config
        return {"method": self.kind, "num_draws": m.draws_per_group, "num_groups": m.num_groups, "seed": m.seed,
                "draw_scheme": m.draw_scheme, "measurements": self.measurement_labels(),
                "measurement.num_draws": m.query_num_draws,
                "projection": {"dim": m.projection_dim, "kind": m.projection_kind, "seed": m.projection_seed}}

    def score(self, inputs: ScoringInputs) -> None:
        """Project with the full model into ``output_dir``, then with each ensemble member into
        ``output_dir/ensemble/<member>`` (the benchmark's queries); each gets its own closed form."""
        q = inputs.queries
        self._score_model(inputs.checkpoint, inputs.output_dir,
                          QueryConfig(q.num_generated, q.seed, q.num_sampling_steps), inputs.data)
        for name, checkpoint in inputs.ensemble.items():
            self.log(f"ensemble member {name}:")
            self._score_model(checkpoint, self.member_dir(inputs.output_dir, name), self.member_queries(inputs),
                              inputs.data)

    def _score_model(self, checkpoint: Path, out: Path, queries: QueryConfig, data: dict[str, Any]) -> None:
        m = self.config
        if (out / METADATA_FILE).exists():
            metadata = read_json(out / METADATA_FILE)
            stored = {**metadata, "measurement.num_draws": (metadata.get("measurement") or {}).get("num_draws")}
            self.refuse_changed(out, stored, self.wanted_settings())
            if metadata.get(FINALIZED_KEY):
                self._refresh_closed_form(out)
                return
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[ScoreWriter()])
        module = ProjectedGradientModule(
            checkpoint=str(checkpoint), output_dir=str(out), queries=queries,
            measurement=MeasurementConfig(measurement=m.measurements[0], num_draws=m.query_num_draws),
            num_draws=m.draws_per_group, seed=m.seed, draw_scheme=m.draw_scheme,
            training_function=self.training_function, measurements=list(m.measurements),
            projection_dim=m.projection_dim, projection_kind=m.projection_kind, projection_seed=m.projection_seed,
            num_groups=m.num_groups)
        self.log(f"projecting {m.num_groups} x {m.draws_per_group} draws to d = {m.projection_dim} ...")
        start = time.perf_counter()
        trainer.predict(module, datamodule=attribution_data(data, m.batch_size), return_predictions=False)
        finish_projected_scores(out, m.report_draws, m.draws_per_group, list(m.dampings))
        self.log(f"done in {time.perf_counter() - start:.0f} s.")

    def _refresh_closed_form(self, output_dir: Path) -> None:
        """Recompute the closed form when report_draws or dampings changed since it was stored."""
        m = self.config
        if finished_closed_form(output_dir) == (list(m.report_draws), [float(d) for d in m.dampings]):
            self.log("already scored.")
            return
        finish_projected_scores(output_dir, m.report_draws, m.draws_per_group, list(m.dampings))
        self.log(f"closed form recomputed for report_draws {m.report_draws}, dampings {m.dampings}.")

    def score_sets(self, output_dir: Path) -> list[ScoreSet]:
        """Per reported S the closed-form scores (and their split halves); with ``ensemble_seeds`` /
        ``ensemble_steps`` the mean over the full model and the members of each model's own closed form (TRAK's
        ensemble, Park et al. 2023)."""
        m = self.config
        members = [output_dir] + [self.member_dir(output_dir, name) for name in m.ensemble_members]
        stored = [np.load(d / TRAK_SCORES_FILE) for d in members]

        def mean(key: str) -> np.ndarray:
            return np.mean([s[key] for s in stored], axis=0)

        return [ScoreSet(d, self.measurement_labels(), list(m.dampings), mean(f"S{d}"),
                         *((mean(f"S{d}_a"), mean(f"S{d}_b")) if f"S{d}_a" in stored[0] else (None, None)))
                for d in m.report_draws]


class DTRAK(TRAK):
    """D-TRAK (Zheng et al. 2024): TRAK on the squared output norm ``||eps_theta(x_t, t)||^2`` for training
    examples and queries alike."""

    kind = "dtrak"
    attribute_module = "lit_attr.attribution.trak.DTRAKModule"
    training_function = SQNORM

    def measurement_labels(self) -> list[str]:
        return [SQNORM]
