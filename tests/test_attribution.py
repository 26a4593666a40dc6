"""The attribution pipeline end to end: outputs, resume, invariances, sanity of the rankings."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from callbacks.curvature import KFACCallback
from callbacks.score_writer import ScoreWriter
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.curvature.factors_io import load_factors
from lit_attr.attribution.run import run_attribution
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.errors import ConfigError, StoreMismatchError
from lit_attr.storage import load_scores
from tests.helpers import run_script, tiny_attribution_run, tiny_config

NUM_TRAIN = 96


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny DDPM trained briefly on digits, its checkpoint and a subset file of NUM_TRAIN examples."""
    return tiny_attribution_run(tmp_path_factory.mktemp("tiny"), NUM_TRAIN)


def attribute_in_process(tiny_run, output_dir, batch_size=32, curvature_draws=2, subset=True, precision=None,
                         **module_kwargs):
    """Run the attribution with a Trainer in this process; returns the module."""
    # damping 1e-4: with only 192 curvature rows the tiny problem is rank-deficient, and at 1e-8 the
    # float32 rounding of the training gradients (which depends on the batch shape) would be
    # amplified by 1/damping along directions the curvature does not see.
    kwargs = dict(queries={"num_generated": 3, "num_sampling_steps": 10}, measurement={"num_draws": 8},
                  num_draws=4, top_k=3, damping=1e-4)
    kwargs.update(module_kwargs)
    module = InfluenceModule(checkpoint=str(tiny_run / "run" / "checkpoints" / "last.ckpt"),
                             output_dir=str(output_dir), **kwargs)
    subset_file = str(tiny_run / "run" / "subset.txt") if subset else None
    data = AttributionDataModule(subset_file=subset_file, batch_size=batch_size)
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=output_dir, precision=precision,
                        callbacks=[KFACCallback(num_draws=curvature_draws, progressbar=False), ScoreWriter()])
    run_attribution(trainer, module, data)
    return module


@pytest.fixture(scope="module")
def reference_scores(tiny_run):
    out = tiny_run / "reference"
    attribute_in_process(tiny_run, out, batch_size=32)
    return out, load_scores(out)


def test_outputs_are_complete(reference_scores):
    out, scores = reference_scores
    assert scores.shape == (NUM_TRAIN, 3) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["finalized"] is True and meta["num_train"] == NUM_TRAIN
    report = json.loads((out / "report.json").read_text())
    first = report["queries"][0]
    assert len(first["most_positive"]) == 3 and first["most_positive"][0]["score"] >= first["most_positive"][1]["score"]
    assert first["most_negative"][0]["score"] == pytest.approx(float(scores[:, 0].min()), rel=1e-6)
    for name in ("report.md", "influence.png", "queries.png", "queries.pt", "train_indices.npy"):
        assert (out / name).stat().st_size > 0
    assert (out / "factors" / "factors.safetensors").exists()


def test_bf16_mixed_scores_agree_with_float32(tiny_run, reference_scores):
    """``--trainer.precision bf16-mixed``: bf16 forward/backward, float32 factors and scores."""
    out, scores = reference_scores
    module = attribute_in_process(tiny_run, tiny_run / "bf16", precision="bf16-mixed")
    bf16 = load_scores(tiny_run / "bf16")
    assert not np.array_equal(bf16, scores)  # the reduced precision did run
    assert bf16.dtype == np.float32 and module.query_rows.scales.dtype == torch.float32
    for q in range(scores.shape[1]):
        assert spearmanr(bf16[:, q], scores[:, q]).statistic >= 0.99, q


def assert_same_curvature(dir_a, dir_b):
    """Factors agree to float32 summation-order rounding (they are float64 sums of float32 terms)."""
    a, b = (load_factors(d / "factors" / "factors.safetensors") for d in (dir_a, dir_b))
    assert a.num_rows == b.num_rows
    for name, (a_a, g_a) in a.factors.items():
        a_b, g_b = b.factors[name]
        torch.testing.assert_close(a_b, a_a, rtol=1e-5, atol=1e-6 * a_a.abs().max().item())
        torch.testing.assert_close(g_b, g_a, rtol=1e-5, atol=1e-6 * g_a.abs().max().item())


def assert_same_scores(actual, expected):
    """Scores agree up to the curvature's rounding amplified by the damped inverse (~1e-3 relative)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-2, atol=1e-3 * np.abs(expected).max())


def test_training_gradients_do_not_depend_on_batch_size(tiny_run, reference_scores):
    module = attribute_in_process(tiny_run, tiny_run / "reference")  # finished run: reloads, scores nothing
    data = AttributionDataModule(subset_file=str(tiny_run / "run" / "subset.txt"))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=20)))
    whole = module.training_gradients(batch)
    parts = torch.cat([module.training_gradients({k: v[i : i + 7] for k, v in batch.items()}) for i in (0, 7, 14)])
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6 * whole.abs().max().item())


def test_scores_do_not_depend_on_batch_size(tiny_run, reference_scores):
    out, scores = reference_scores
    other = tiny_run / "batch7"
    attribute_in_process(tiny_run, other, batch_size=7)
    assert_same_curvature(out, other)
    assert_same_scores(load_scores(other), scores)


def test_curvature_does_not_depend_on_the_gradient_draw_sharing(tiny_run, reference_scores):
    """Shared gradient draws keep per-example curvature draws: the factors equal the unshared run's."""
    out, _ = reference_scores  # stratified
    shared = tiny_run / "shared_stratified"
    module = attribute_in_process(tiny_run, shared, draw_scheme="shared_stratified")
    a, b = (load_factors(d / "factors" / "factors.safetensors") for d in (out, shared))
    assert b.metadata["draw_scheme"] == "stratified"
    for name, (a_a, g_a) in a.factors.items():
        assert torch.equal(b.factors[name][0], a_a) and torch.equal(b.factors[name][1], g_a)
    assert module.draw_scheme.value == "shared_stratified"
    with pytest.raises(ConfigError, match="cannot be shared"):
        KFACCallback(draw_scheme="shared")


def test_batches_of_one_example_and_one_query(tiny_run, reference_scores):
    """Ragged last batches of ONE training example (96 = 95 + 1) and ONE query (3 = 2 + 1) once crashed."""
    out, scores = reference_scores
    ragged = tiny_run / "ragged"
    attribute_in_process(tiny_run, ragged, batch_size=95, query_batch_size=2)
    assert_same_curvature(out, ragged)
    assert_same_scores(load_scores(ragged), scores)
    single = tiny_run / "single_query"
    attribute_in_process(tiny_run, single, curvature_draws=1, queries={"num_generated": 1, "num_sampling_steps": 10})
    assert load_scores(single).shape == (NUM_TRAIN, 1) and np.isfinite(load_scores(single)).all()


def test_int8_query_compression_keeps_the_ranking(tiny_run, reference_scores):
    _, int8_scores = reference_scores
    out = tiny_run / "fp32"
    attribute_in_process(tiny_run, out, query_compression="none")
    exact = load_scores(out)
    for q in range(exact.shape[1]):
        assert spearmanr(exact[:, q], int8_scores[:, q]).statistic >= 0.99


def test_resume_after_interruption_gives_identical_scores(tiny_run, reference_scores):
    _, scores = reference_scores
    out = tiny_run / "resumed"
    module = attribute_in_process(tiny_run, out)
    # simulate a crash after the first 40 rows: forget the other rows and the finalized flag
    done = np.load(out / "scores_done.npy", mmap_mode="r+")
    done[40:] = 0
    done.flush()
    partial = np.load(out / "scores.npy", mmap_mode="r+")
    partial[40:] = 0
    partial.flush()
    meta = json.loads((out / "metadata.json").read_text())
    (out / "metadata.json").write_text(json.dumps({**meta, "finalized": False}))
    with pytest.raises(RuntimeError, match="not finalized"):
        load_scores(out)
    resumed = attribute_in_process(tiny_run, out)
    assert resumed.trainer.datamodule.exclude_indices == frozenset(range(40))
    assert_same_scores(load_scores(out), scores)
    np.testing.assert_array_equal(load_scores(out)[:40], np.asarray(partial[:40]))  # kept, not recomputed
    del module


def test_training_image_as_query_ranks_itself_in_the_top_percent(tiny_run):
    out = tiny_run / "self"
    queries = [5, 500, 1234]
    # S = 32 training draws: with 8, the MC noise of an atypical image's gradient can hide it
    attribute_in_process(tiny_run, out, subset=False, batch_size=128, queries={"train_indices": queries},
                         num_draws=32, measurement={"num_draws": 64}, damping=1e-8)
    scores = load_scores(out)
    assert scores.shape == (1797, 3)
    for q, index in enumerate(queries):
        rank = int((scores[:, q] > scores[index, q]).sum())
        assert rank < 0.01 * len(scores), f"training image {index} ranks {rank} among its own positive influences"


def test_cli_end_to_end_and_mismatch_error(tiny_run, tmp_path):
    config = tiny_config(tmp_path, "attribute.yaml")
    config.write_text(config.read_text().replace(str(tmp_path / "run"), str(tiny_run / "run"))
                      .replace(str(tiny_run / "run") + "/attribution", str(tmp_path / "attr")))
    proc = run_script("attribute.py", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "influence.png" in proc.stdout
    proc = run_script("attribute.py", "--config", str(config), "--model.damping", "0.001")
    assert proc.returncode != 0
    assert "damping" in proc.stderr and "--model.overwrite true" in proc.stderr
    assert load_scores(tmp_path / "attr").shape == (NUM_TRAIN, 3)  # the finished run is untouched


def test_ddp_two_processes_match_one(tiny_run, reference_scores, tmp_path):
    _, scores = reference_scores
    config = tiny_config(tmp_path, "attribute.yaml")
    config.write_text(config.read_text().replace(str(tmp_path / "run"), str(tiny_run / "run"))
                      .replace(str(tiny_run / "run") + "/attribution", str(tmp_path / "ddp")))
    proc = run_script("attribute.py", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "metadata.json").read_text())["num_devices"] == 2
    assert_same_curvature(reference_scores[0], tmp_path / "ddp")
    assert_same_scores(load_scores(tmp_path / "ddp"), scores)


def test_bad_measurement_is_refused_before_any_work(tmp_path):
    proc = run_script("attribute.py", "--config", "configs/attribute/digits.yaml", "--model.measurement.measurement",
                      "elbow", "--model.output_dir", str(tmp_path / "x"))
    assert proc.returncode != 0 and "elbow" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_trajectory_logprob_measurement_end_to_end(tiny_run):
    out = tiny_run / "trajectory"
    module = attribute_in_process(tiny_run, out, measurement={"measurement": "trajectory_logprob", "num_draws": 8})
    assert module.queries.trajectory.shape == (11, 3, 1, 8, 8)  # 10 sampler steps + x_0
    scores = load_scores(out)
    assert np.isfinite(scores).all() and np.abs(scores).max() > 0


def test_changed_query_settings_are_refused_not_silently_reused(tiny_run, reference_scores):
    out, scores = reference_scores
    with pytest.raises(StoreMismatchError, match="queries.*--model.overwrite true"):
        attribute_in_process(tiny_run, out, queries={"num_generated": 4, "num_sampling_steps": 10})
    np.testing.assert_array_equal(load_scores(out), scores)


def test_non_finite_training_image_stops_scoring_naming_the_stage_and_layer(tiny_run, reference_scores):
    from lit_attr.errors import NumericalError

    module = attribute_in_process(tiny_run, tiny_run / "reference")  # finished run: reloads, scores nothing
    data = AttributionDataModule(subset_file=str(tiny_run / "run" / "subset.txt"))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=4)))
    batch["image"][1, 0, 2, 2] = float("nan")
    with pytest.raises(NumericalError, match=r"training gradients of examples \[0, 1, 2\]\.\.\.: nan in \S+; a training "
                                             r"image holds NaN/Inf"):
        module.training_gradients(batch)


def test_non_finite_layer_wise_scores_name_their_cause(tiny_run, reference_scores):
    """predict_step scores layer by layer (no gradient matrix): a NaN image still names the training gradients'
    layer, and finite gradients against queries that overflow float32 name the scores."""
    from lit_attr.attribution.quantize import QueryCompression, compress
    from lit_attr.errors import NumericalError

    module = attribute_in_process(tiny_run, tiny_run / "reference")
    data = AttributionDataModule(subset_file=str(tiny_run / "run" / "subset.txt"))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=4)))
    num_params = module.training_gradients(batch).shape[1]
    module.query_rows = compress(torch.full((2, num_params), 1e38), QueryCompression.INT8)
    with pytest.raises(NumericalError, match=r"scoring of examples \[0, 1, 2\]\.\.\.: .*overflow float32"):
        module.predict_step(batch, 0)
    batch["image"][1, 0, 2, 2] = float("nan")
    with pytest.raises(NumericalError, match=r"training gradients of examples \[0, 1, 2\]\.\.\.: nan in \S+"):
        module.predict_step(batch, 0)


def test_relative_influence_divides_each_row_by_its_loss_gradient_norm(tiny_run, reference_scores):
    """``relative_influence``: row j of the reference scores (same draws, curvature and query compression) divided
    by ||grad L(x_j)||; the setting is part of the run's identity (a changed setting is refused)."""
    out, raw = reference_scores
    relative_dir = tiny_run / "relative"
    module = attribute_in_process(tiny_run, relative_dir, relative_influence=True)
    relative = load_scores(relative_dir)
    data = AttributionDataModule(subset_file=str(tiny_run / "run" / "subset.txt"))
    data.setup()
    batch = next(iter(torch.utils.data.DataLoader(data.dataset, batch_size=NUM_TRAIN)))
    norms = module.training_gradients(batch).norm(dim=1).double().numpy()[:, None]
    np.testing.assert_allclose(relative, raw / norms, rtol=1e-3, atol=1e-4 * np.abs(raw / norms).max())
    assert len(np.unique(np.round(norms, 6))) > 1  # the rows are scaled differently: not a global rescaling
    with pytest.raises(StoreMismatchError):
        attribute_in_process(tiny_run, out, relative_influence=True)
