"""Run one method of a benchmark: a ``Trainer.predict`` pass of ``VariantInfluenceModule``."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import yaml

from callbacks.curvature import KFACCallback
from callbacks.score_writer import ScoreWriter
from lit_attr.attribution.influence import MeasurementConfig
from lit_attr.attribution.queries import QueryConfig
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.evaluation.config import MethodConfig, QueriesConfig
from lit_attr.evaluation.variants import VariantInfluenceModule
from lit_attr.storage import read_json

CURVATURE_SEED = 0
"""Seed of the curvature draws, shared by all methods (their factors are then reused)."""


def curvature_path(curvature_dir: Path, method: MethodConfig) -> Path:
    """Factors file shared by every method with the same K-FAC settings."""
    c = method.curvature
    name = f"{c.fisher_type}_{c.kfac_approx}_S{c.num_draws}{'_ekfac' if c.eigenvalue_correction else ''}"
    return curvature_dir / f"{name}.safetensors"


def score_method(method: MethodConfig, checkpoint: Path, output_dir: Path, curvature_dir: Path, recipe: str,
                 queries: QueriesConfig) -> None:
    """Score all training examples of the recipe's data for every variant of ``method``; skipped when done."""
    metadata = output_dir / "metadata.json"
    if metadata.exists() and read_json(metadata).get("finalized"):
        print(f"[methods] {method.name}: already scored.", flush=True)
        return
    data = (yaml.safe_load(Path(recipe).read_text()) or {}).get("data") or {}
    keep = ("dataset", "data_dir", "image_size", "channels", "cifar2_seed", "num_per_class")
    datamodule = AttributionDataModule(**{k: v for k, v in data.items() if k in keep}, batch_size=method.batch_size)
    c = method.curvature
    kfac = KFACCallback(num_draws=c.num_draws, fisher_type=c.fisher_type, kfac_approx=c.kfac_approx,
                        eigenvalue_correction=c.eigenvalue_correction, seed=CURVATURE_SEED,
                        draw_scheme="independent", factors_path=str(curvature_path(curvature_dir, method)),
                        progressbar=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[kfac, ScoreWriter()])
    module = VariantInfluenceModule(
        checkpoint=str(checkpoint), output_dir=str(output_dir),
        queries=QueryConfig(queries.num_generated, queries.seed, queries.num_sampling_steps),
        measurement=MeasurementConfig(measurement=method.measurements[0], num_draws=method.query_num_draws),
        num_draws=method.draws_per_group, seed=method.seed, draw_scheme=method.draw_scheme,
        damping=method.dampings[0], measurements=list(method.measurements), dampings=list(method.dampings),
        num_groups=method.num_groups)
    print(f"[methods] {method.name}: scoring {method.num_groups} x {method.draws_per_group} draws, "
          f"measurements {method.measurements}, dampings {method.dampings} ...", flush=True)
    start = time.perf_counter()
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    print(f"[methods] {method.name}: done in {time.perf_counter() - start:.0f} s.", flush=True)
