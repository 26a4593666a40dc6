"""``KFACInfluence``: K-FAC / EK-FAC influence (paper eq. 12) for every measurement, damping and draw group in
one ``Trainer.predict`` pass of ``VariantInfluenceModule``; factors shared by methods with equal K-FAC settings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from lit_attr.attribution.measurement_config import MeasurementConfig
from lit_attr.attribution.queries import QueryConfig
from lit_attr.attribution.score_writer import ScoreWriter
from lit_attr.constants import CURVATURE_DIR, FINALIZED_KEY, METADATA_FILE
from lit_attr.curvature.callback import KFACCallback
from lit_attr.evaluation.variants import VariantInfluenceModule, load_variant_scores
from lit_attr.methods.base import AttributionMethod, ScoreSet, ScoringInputs, attribution_data
from lit_attr.storage import read_json

CURVATURE_KEYS = ("num_draws", "fisher_type", "kfac_approx", "eigenvalue_correction", "draw_scheme", "mc_samples",
                  "seed")


class KFACInfluence(AttributionMethod):
    """K-FAC influence (ours); EK-FAC with ``curvature.eigenvalue_correction: true``."""

    kind = "kfac"
    attribute_module = "lit_attr.attribution.influence.InfluenceModule"
    uses_curvature = True

    def curvature_path(self, curvature_dir: Path) -> Path:
        """Factors file shared by every method with the same K-FAC settings."""
        c = self.config.curvature
        scheme = "" if c.draw_scheme == "independent" else f"_{c.draw_scheme}"
        extra = (f"_mc{c.mc_samples}" if c.mc_samples != 1 else "") + (f"_seed{c.seed}" if c.seed else "")
        name = (f"{c.fisher_type}_{c.kfac_approx}_S{c.num_draws}{scheme}{extra}"
                f"{'_ekfac' if c.eigenvalue_correction else ''}")
        return curvature_dir / f"{name}.safetensors"

    def wanted_settings(self) -> dict[str, Any]:
        """The settings the stored scores must have been made with (flat keys, ``curvature.*`` nested)."""
        m, c = self.config, self.config.curvature
        return {"num_draws": m.draws_per_group, "num_groups": m.num_groups, "seed": m.seed,
                "draw_scheme": m.draw_scheme, "measurements": list(m.measurements),
                "dampings": [float(d) for d in m.dampings], "measurement.num_draws": m.query_num_draws,
                "query_compression": m.query_compression, "relative_influence": m.relative_influence,
                **{f"curvature.{key}": getattr(c, key) for key in CURVATURE_KEYS}}

    @staticmethod
    def stored_settings(metadata: dict[str, Any]) -> dict[str, Any]:
        """The same keys read from a run's ``metadata.json``."""
        stored = {key: metadata.get(key) for key in ("num_draws", "num_groups", "seed", "draw_scheme",
                                                      "measurements", "dampings", "query_compression")}
        stored["measurement.num_draws"] = (metadata.get("measurement") or {}).get("num_draws")
        stored["relative_influence"] = bool(metadata.get("relative_influence", False))  # stored only when on
        for key in CURVATURE_KEYS:
            stored[f"curvature.{key}"] = (metadata.get("curvature") or {}).get(key)
        return stored

    def score(self, inputs: ScoringInputs) -> None:
        """Score with the full model into ``output_dir``, then with each ensemble member into
        ``output_dir/ensemble/<member>`` (its own curvature, next to its checkpoint; the benchmark's queries)."""
        q = inputs.queries
        self._score_model(inputs.checkpoint, inputs.output_dir, inputs.curvature_dir,
                          QueryConfig(q.num_generated, q.seed, q.num_sampling_steps), inputs.data)
        for name, checkpoint in inputs.ensemble.items():
            self.log(f"ensemble member {name}:")
            self._score_model(checkpoint, self.member_dir(inputs.output_dir, name), checkpoint.parent / CURVATURE_DIR,
                              self.member_queries(inputs), inputs.data)

    def _score_model(self, checkpoint: Path, out: Path, curvature_dir: Path, queries: QueryConfig,
                     data: dict[str, Any]) -> None:
        m = self.config
        if (out / METADATA_FILE).exists():
            metadata = read_json(out / METADATA_FILE)
            self.refuse_changed(out, self.stored_settings(metadata), self.wanted_settings())
            if metadata.get(FINALIZED_KEY):
                self.log("already scored.")
                return
        c = m.curvature
        kfac = KFACCallback(num_draws=c.num_draws, fisher_type=c.fisher_type, kfac_approx=c.kfac_approx,
                            mc_samples=c.mc_samples, eigenvalue_correction=c.eigenvalue_correction, seed=c.seed,
                            draw_scheme=c.draw_scheme, factors_path=str(self.curvature_path(curvature_dir)),
                            progressbar=False)
        trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[kfac, ScoreWriter()])
        module = VariantInfluenceModule(
            checkpoint=str(checkpoint), output_dir=str(out), queries=queries,
            measurement=MeasurementConfig(measurement=m.measurements[0], num_draws=m.query_num_draws),
            num_draws=m.draws_per_group, seed=m.seed, draw_scheme=m.draw_scheme, damping=m.dampings[0],
            query_compression=m.query_compression, measurements=list(m.measurements), dampings=list(m.dampings),
            num_groups=m.num_groups, relative_influence=m.relative_influence)
        self.log(f"scoring {m.num_groups} x {m.draws_per_group} draws, measurements {m.measurements}, "
                 f"dampings {m.dampings} ...")
        start = time.perf_counter()
        trainer.predict(module, datamodule=attribution_data(data, m.batch_size), return_predictions=False)
        self.log(f"done in {time.perf_counter() - start:.0f} s.")

    def score_sets(self, output_dir: Path) -> list[ScoreSet]:
        """Per reported S: the mean over its first S / draws_per_group groups, and over each half of them (no halves
        for a single group); with
        ``ensemble_seeds`` / ``ensemble_steps``, averaged over the full model and the members (a TRAK-style ensemble
        over training runs / over checkpoints of the final phase of one run).
        ``draw_sets``: the disjoint sets of S draws the run holds."""
        m = self.config
        members = [output_dir] + [self.member_dir(output_dir, name) for name in m.ensemble_members]
        scores = np.mean([load_variant_scores(d) for d in members], axis=0)  # (N, G, M, D, Q), ensemble mean
        sets = []
        for draws in m.report_draws:
            k = draws // m.draws_per_group
            disjoint = [scores[:, i:i + k].mean(axis=1) for i in range(0, m.num_groups - k + 1, k)]
            halves = (scores[:, :k // 2].mean(axis=1), scores[:, k // 2:k].mean(axis=1)) if k > 1 else (None, None)
            sets.append(ScoreSet(draws, list(m.measurements), list(m.dampings), disjoint[0], *halves,
                                 disjoint if len(disjoint) > 1 else []))
        return sets
