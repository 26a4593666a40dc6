"""Run one method of a benchmark: a ``Trainer.predict`` pass of ``VariantInfluenceModule``."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import yaml

from lit_attr.attribution.influence import MeasurementConfig
from lit_attr.attribution.score_writer import ScoreWriter
from lit_attr.attribution.queries import QueryConfig
from lit_attr.constants import FINALIZED_KEY, METADATA_FILE, SCORES_FILE
from lit_attr.curvature.callback import KFACCallback
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.evaluation.config import MethodConfig, QueriesConfig, recipe_dataset_arguments
from lit_attr.evaluation.variants import VariantInfluenceModule
from lit_attr.errors import StoreMismatchError
from lit_attr.storage import read_json, write_json_atomic

CURVATURE_SEED = 0
"""Seed of the curvature draws, shared by all methods (their factors are then reused)."""


def curvature_path(curvature_dir: Path, method: MethodConfig) -> Path:
    """Factors file shared by every method with the same K-FAC settings."""
    c = method.curvature
    scheme = "" if c.draw_scheme == "independent" else f"_{c.draw_scheme}"
    name = f"{c.fisher_type}_{c.kfac_approx}_S{c.num_draws}{scheme}{'_ekfac' if c.eigenvalue_correction else ''}"
    return curvature_dir / f"{name}.safetensors"


def _differences(stored: dict, wanted: dict) -> dict[str, tuple]:
    """Keys of ``wanted`` whose stored value differs: key -> (stored, wanted)."""
    return {key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value}


def settings_mismatch(method: MethodConfig, metadata: dict) -> dict[str, tuple]:
    """Settings of ``method`` that differ from a stored run's ``metadata``: key -> (stored, wanted)."""
    c = method.curvature
    wanted = {"num_draws": method.draws_per_group, "num_groups": method.num_groups, "seed": method.seed,
              "draw_scheme": method.draw_scheme, "measurements": list(method.measurements),
              "dampings": [float(d) for d in method.dampings],
              "measurement.num_draws": method.query_num_draws, "curvature.num_draws": c.num_draws,
              "curvature.fisher_type": c.fisher_type, "curvature.kfac_approx": c.kfac_approx,
              "curvature.eigenvalue_correction": c.eigenvalue_correction, "curvature.draw_scheme": c.draw_scheme}
    stored = {key: metadata.get(key) for key in ("num_draws", "num_groups", "seed", "draw_scheme", "measurements",
                                                  "dampings")}
    stored["measurement.num_draws"] = (metadata.get("measurement") or {}).get("num_draws")
    for key in ("num_draws", "fisher_type", "kfac_approx", "eigenvalue_correction", "draw_scheme"):
        stored[f"curvature.{key}"] = (metadata.get("curvature") or {}).get(key)
    return _differences(stored, wanted)


def projected_settings_mismatch(method: MethodConfig, metadata: dict) -> dict[str, tuple]:
    """Settings of a TRAK / D-TRAK ``method`` that differ from its stored projection pass: key -> (stored, wanted).

    Dampings and report_draws are not among them: they only enter the closed form, recomputed from the stored
    projected gradients when they change.
    """
    wanted = {"method": method.kind, "num_draws": method.draws_per_group, "num_groups": method.num_groups,
              "seed": method.seed, "draw_scheme": method.draw_scheme,
              "measurements": ["sqnorm"] if method.kind == "dtrak" else list(method.measurements),
              "measurement.num_draws": method.query_num_draws,
              "projection": {"dim": method.projection_dim, "kind": method.projection_kind,
                             "seed": method.projection_seed}}
    stored = {**metadata, "measurement.num_draws": (metadata.get("measurement") or {}).get("num_draws")}
    return _differences(stored, wanted)


def similarity_settings(method: MethodConfig) -> dict:
    """What a pixel / CLIP cosine method's scores depend on (stored beside them)."""
    if method.kind == "clip":
        return {"kind": "clip", "clip_model": method.clip_model, "clip_weights": method.clip_weights}
    return {"kind": method.kind}


def _refuse(method: MethodConfig, output_dir: Path, differing: dict) -> None:
    if differing:
        raise StoreMismatchError(f"{output_dir} holds scores of method {method.name!r} made with other settings "
                                 f"{differing} (stored, wanted); rename the method or delete that folder.")


def score_method(method: MethodConfig, checkpoint: Path, output_dir: Path, curvature_dir: Path, recipe: str | dict,
                 queries: QueriesConfig) -> None:
    """Score all training examples of the recipe's data for every variant of ``method``; skipped when done."""
    metadata_path = output_dir / METADATA_FILE
    if metadata_path.exists():
        metadata = read_json(metadata_path)
        _refuse(method, output_dir, settings_mismatch(method, metadata))
        if metadata.get(FINALIZED_KEY):
            print(f"[methods] {method.name}: already scored.", flush=True)
            return
    datamodule = _attribution_data(recipe, method.batch_size)
    c = method.curvature
    kfac = KFACCallback(num_draws=c.num_draws, fisher_type=c.fisher_type, kfac_approx=c.kfac_approx,
                        eigenvalue_correction=c.eigenvalue_correction, seed=CURVATURE_SEED,
                        draw_scheme=c.draw_scheme, factors_path=str(curvature_path(curvature_dir, method)),
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


def _attribution_data(recipe: str | dict, batch_size: int) -> AttributionDataModule:
    """The attribution data of a recipe file or of its ``data`` settings (``Benchmark.data_settings``)."""
    data = recipe if isinstance(recipe, dict) else (yaml.safe_load(Path(recipe).read_text()) or {}).get("data") or {}
    return AttributionDataModule(**recipe_dataset_arguments(data), batch_size=batch_size)


def score_projected(method: MethodConfig, checkpoint: Path, output_dir: Path, recipe: str | dict,
                    queries: QueriesConfig) -> None:
    """TRAK / D-TRAK: projected gradients in one pass (``ProjectedGradientModule``), then closed-form scores."""
    from lit_attr.evaluation.projected import ProjectedGradientModule, finish_projected_scores, finished_closed_form

    metadata_path = output_dir / METADATA_FILE
    if metadata_path.exists():
        metadata = read_json(metadata_path)
        _refuse(method, output_dir, projected_settings_mismatch(method, metadata))
        if metadata.get(FINALIZED_KEY):
            if finished_closed_form(output_dir) != (list(method.report_draws), [float(d) for d in method.dampings]):
                finish_projected_scores(output_dir, method.report_draws, method.draws_per_group, list(method.dampings))
                print(f"[methods] {method.name}: closed form recomputed for report_draws {method.report_draws}, "
                      f"dampings {method.dampings}.", flush=True)
            else:
                print(f"[methods] {method.name}: already scored.", flush=True)
            return
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, inference_mode=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ScoreWriter()])
    module = ProjectedGradientModule(
        checkpoint=str(checkpoint), output_dir=str(output_dir),
        queries=QueryConfig(queries.num_generated, queries.seed, queries.num_sampling_steps),
        measurement=MeasurementConfig(measurement=method.measurements[0], num_draws=method.query_num_draws),
        num_draws=method.draws_per_group, seed=method.seed, draw_scheme=method.draw_scheme,
        training_function="sqnorm" if method.kind == "dtrak" else "loss", measurements=list(method.measurements),
        projection_dim=method.projection_dim, projection_kind=method.projection_kind,
        projection_seed=method.projection_seed, num_groups=method.num_groups)
    print(f"[methods] {method.name}: projecting {method.num_groups} x {method.draws_per_group} draws to "
          f"d = {method.projection_dim} ...", flush=True)
    start = time.perf_counter()
    trainer.predict(module, datamodule=_attribution_data(recipe, method.batch_size), return_predictions=False)
    finish_projected_scores(output_dir, method.report_draws, method.draws_per_group, list(method.dampings))
    print(f"[methods] {method.name}: done in {time.perf_counter() - start:.0f} s.", flush=True)


def score_similarity(method: MethodConfig, dataset, query_images, output_dir: Path) -> None:
    """Pixel or CLIP cosine similarity of every training image to every query: ``scores.npy`` (N, Q)."""
    import numpy as np
    import torch

    from lit_attr.baselines.similarity import clip_embeddings, cosine_scores, load_open_clip

    path, settings = output_dir / SCORES_FILE, output_dir / "similarity.json"
    if path.exists():
        stored = read_json(settings) if settings.exists() else {}
        _refuse(method, output_dir, _differences(stored, similarity_settings(method)))
        print(f"[methods] {method.name}: already scored.", flush=True)
        return
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    if method.kind == "clip":
        model = load_open_clip(method.clip_model, method.clip_weights)
        scores = cosine_scores(clip_embeddings(model, images), clip_embeddings(model, query_images))
    else:
        scores = cosine_scores(images, query_images)
    write_json_atomic(settings, similarity_settings(method))
    tmp = output_dir / "partial_scores.npy"
    np.save(tmp, scores.float().numpy())
    tmp.replace(path)
    print(f"[methods] {method.name}: done.", flush=True)
