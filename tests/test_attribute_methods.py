"""``attribute.py --method NAME``: every method through ``attribute.main`` on the tiny config (outputs, shape,
sign, resume, refusal of a changed setting), and the same scores as the benchmark's method of the same settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from attribute import main as attribute_main
from lit_attr.attribution.continuation import continue_training
from lit_attr.baselines.trak import trak_scores
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.errors import ConfigError, StoreMismatchError
from lit_attr.pipeline_io import export_pipeline, load_ddpm_module
from lit_attr.storage import load_scores
from tests.helpers import ROOT, run_script, tiny_attribution_run, tiny_config, tiny_open_clip

NUM_TRAIN = 96
FAST = {"trak": ["--model.projection_dim=64"], "dtrak": ["--model.projection_dim=64"]}
"""Per method: flags that keep the tiny run at a few seconds."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny DDPM trained briefly on digits, and the tiny attribution config pointing at it (NUM_TRAIN examples)."""
    root = tiny_attribution_run(tmp_path_factory.mktemp("methods"), NUM_TRAIN)
    return root, tiny_config(root, "attribute.yaml")


def attribute(tiny_run, name, method, *extra):
    """``attribute.py --config <tiny> --method <method> --model.output_dir <root>/<name> ...``; returns the folder."""
    root, config = tiny_run
    out = root / name
    attribute_main(["--config", str(config), "--method", method, f"--model.output_dir={out}",
                    f"--trainer.default_root_dir={out}", *FAST.get(method, []), *extra])
    return out


@pytest.mark.parametrize("method", ["ekfac", "trak", "dtrak", "pixel"])
def test_every_method_writes_the_outputs_of_a_kfac_run(tiny_run, method):
    out = attribute(tiny_run, method, method)
    scores = load_scores(out)
    assert scores.shape == (NUM_TRAIN, 3) and np.isfinite(scores).all() and np.abs(scores).max() > 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["finalized"] is True and meta["num_train"] == NUM_TRAIN and meta["num_queries"] == 3
    for name in ("report.json", "report.md", "influence.png", "queries.png", "queries.pt", "train_indices.npy"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    assert report["queries"][0]["most_positive"][0]["score"] == pytest.approx(float(scores[:, 0].max()), rel=1e-6)
    if method == "ekfac":
        assert meta["curvature"]["eigenvalue_correction"] is True and meta["method"] == "kfac_influence"
    else:
        assert meta["method"] == method and "curvature" not in meta and not (out / "factors").exists()
    if method == "pixel":
        assert scores.max() <= 1 + 1e-6 and scores.min() >= -1 - 1e-6


def test_pixel_and_trak_rank_a_training_image_used_as_query_first(tiny_run):
    queries = ["--model.queries.train_indices=[5, 40, 77]"]
    pixel = load_scores(attribute(tiny_run, "pixel_self", "pixel", *queries))
    assert pixel.argmax(axis=0).tolist() == [5, 40, 77]
    np.testing.assert_allclose(pixel[[5, 40, 77], [0, 1, 2]], 1.0, rtol=1e-6)
    trak = load_scores(attribute(tiny_run, "trak_self", "trak", *queries, "--model.projection_dim=256",
                                 "--model.damping=1e-3"))
    assert all(int((trak[:, q] > trak[index, q]).sum()) < 3 for q, index in enumerate([5, 40, 77]))


def test_trak_resumes_and_refuses_changed_settings(tiny_run, capsys):
    out = attribute(tiny_run, "trak_resume", "trak")
    scores = load_scores(out)
    features = out / "features"
    done = np.load(features / "scores_done.npy", mmap_mode="r+")
    done[40:] = 0  # a crash after 40 rows of the feature pass, before the closed form
    done.flush()
    for folder in (features, out):
        meta = json.loads((folder / "metadata.json").read_text())
        (folder / "metadata.json").write_text(json.dumps({**meta, "finalized": False}))
    attribute(tiny_run, "trak_resume", "trak")
    np.testing.assert_array_equal(load_scores(out), scores)
    with pytest.raises(StoreMismatchError, match=r"damping: stored 0.0001, now 0.01.*--model.overwrite true"):
        attribute(tiny_run, "trak_resume", "trak", "--model.damping=0.01")
    with pytest.raises(StoreMismatchError, match=r"projection: stored .*'dim': 64.*'dim': 32"):
        attribute(tiny_run, "trak_resume", "trak", "--model.projection_dim=32")
    np.testing.assert_array_equal(load_scores(out), scores)  # the finished run is untouched
    attribute(tiny_run, "trak_resume", "trak", "--model.damping=0.01", "--model.overwrite=true")
    assert not np.allclose(load_scores(out), scores)


def test_similarity_refuses_settings_of_other_methods_given_as_flags(tiny_run):
    with pytest.raises(SystemExit):  # jsonargparse: pixel cosine takes no damping
        attribute(tiny_run, "pixel_flags", "pixel", "--model.damping=0.1")
    with pytest.raises(ConfigError, match="--method clip needs --model.clip_weights"):
        attribute(tiny_run, "clip_none", "clip")
    with pytest.raises(ConfigError, match="--method bogus is not known; choose one of kfac, trak"):
        attribute(tiny_run, "bogus", "bogus")


def test_clip_cosine_with_local_weights(tiny_run, tmp_path):
    config, weights, model = tiny_open_clip(tmp_path)
    out = attribute(tiny_run, "clip", "clip", f"--model.clip_model={config}", f"--model.clip_weights={weights}",
                    "--model.queries.train_indices=[7]")
    scores = load_scores(out)
    assert scores.shape == (NUM_TRAIN, 1) and scores.argmax() == 7
    assert json.loads((out / "metadata.json").read_text())["clip_weights"] == str(weights)


def test_attribute_gives_the_benchmark_scores_of_the_same_method_settings(tmp_path):
    """``configs/lds/smoke.yaml``'s trak and pixel methods scored by the benchmark, and by attribute.py on the
    benchmark's full model and queries settings: pixel identical, TRAK equal to the closed form of the benchmark's
    first draw group (attribute.py scores one group of S = draws_per_group draws)."""
    from evaluate import benchmark_config, build_parser, stage_jobs
    from lit_attr.evaluation.campaign import Benchmark

    parser = build_parser()
    parsed = parser.parse_args(["run", "--config", str(ROOT / "configs" / "lds" / "smoke.yaml"),
                                f"--root={tmp_path / 'bench'}"])
    bench = Benchmark(benchmark_config(parser.instantiate(parsed)["run"]))
    bench.run_jobs(stage_jobs(bench, "full"))
    trak, pixel = (next(m for m in bench.config.methods if m.name == name) for name in ("trak", "pixel"))
    bench.run_method(trak)
    bench.run_method(pixel)
    q = bench.config.queries
    common = ["--config", str(ROOT / "configs" / "tiny" / "attribute.yaml"), "--data.subset_file=null",
              f"--model.checkpoint={tmp_path / 'bench' / 'full' / 'model.ckpt'}",
              f"--model.queries.num_generated={q.num_generated}", f"--model.queries.seed={q.seed}",
              f"--model.queries.num_sampling_steps={q.num_sampling_steps}"]
    attribute_main([*common, "--method=pixel", f"--model.output_dir={tmp_path / 'pixel'}"])
    np.testing.assert_array_equal(load_scores(tmp_path / "pixel"), np.load(bench.method_dir(pixel) / "scores.npy"))
    attribute_main([*common, "--method=trak", f"--model.output_dir={tmp_path / 'trak'}",
                    f"--model.num_draws={trak.draws_per_group}", f"--model.draw_scheme={trak.draw_scheme}",
                    f"--model.seed={trak.seed}", f"--model.measurement.num_draws={trak.query_num_draws}",
                    f"--model.projection_dim={trak.projection_dim}", f"--model.damping={trak.dampings[0]}"])
    features = torch.from_numpy(np.load(bench.method_dir(trak) / "scores.npy")[:, :trak.projection_dim]).double()
    queries = torch.load(bench.method_dir(trak) / "query_features.pt", weights_only=True)["loss"]
    expected = trak_scores(features, queries, [trak.dampings[0]])[0].float().numpy()
    np.testing.assert_allclose(load_scores(tmp_path / "trak"), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_per_timestep_loss_has_evaluate_py_spelling_and_the_old_one_still_resumes(tiny_run):
    """``loss_at_t<t>`` (evaluate.py's name) in attribute.py; ``loss_at_timestep`` + ``timestep`` warns, means the same
    and stores the same settings (a run made with either spelling resumes with the other)."""
    from lit_attr.evaluation.config import TrueMeasurementConfig

    old = ["--model.measurement.measurement=loss_at_timestep", "--model.measurement.timestep=300"]
    with pytest.warns(FutureWarning, match="deprecated; write --model.measurement.measurement loss_at_t300"):
        out = attribute(tiny_run, "timestep", "kfac", *old)
    scores = load_scores(out)
    stored = json.loads((out / "metadata.json").read_text())["measurement"]
    assert stored == {"measurement": "loss_at_timestep", "num_draws": 8, "timestep": 300}
    attribute(tiny_run, "timestep", "kfac", "--model.measurement.measurement=loss_at_t300")  # resumes: nothing to redo
    np.testing.assert_array_equal(load_scores(out), scores)
    with pytest.raises(StoreMismatchError, match="timestep"):
        attribute(tiny_run, "timestep", "kfac", "--model.measurement.measurement=loss_at_t200")
    with pytest.raises(ConfigError, match="write loss_at_t<t>"):
        attribute(tiny_run, "timestep", "kfac", "--model.measurement.measurement=loss_at_timestep")
    with pytest.raises(ConfigError, match="timestep applies to the per-timestep loss only"):
        attribute(tiny_run, "timestep", "kfac", "--model.measurement.timestep=3")
    assert TrueMeasurementConfig(measurements=["loss_at_t300"]).measurements == ["loss_at_t300"]  # evaluate.py's
    with pytest.raises(ConfigError, match="loss_at_t<t>"):
        TrueMeasurementConfig(measurements=["loss_at_timestep"])


def perturbed_checkpoint(root, path):
    """A second "model" at ``path``: the tiny run's weights, perturbed."""
    checkpoint = torch.load(root / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    generator = torch.Generator().manual_seed(1)
    for value in checkpoint["state_dict"].values():
        if torch.is_floating_point(value) and value.dim() > 1:
            value.add_(0.05 * value.std() * torch.randn(value.shape, generator=generator))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_ensemble_averages_finished_runs_of_several_models_and_refuses_mismatched_members(tiny_run):
    root, _ = tiny_run
    second = perturbed_checkpoint(root, root / "second.ckpt")
    first = attribute(tiny_run, "member_a", "kfac")
    other = attribute(tiny_run, "member_b", "kfac", f"--model.checkpoint={second}",
                      f"--model.queries.file={first / 'queries.pt'}")
    a, b = load_scores(first), load_scores(other)
    assert not np.allclose(a, b)  # another model
    out = attribute(tiny_run, "ensemble", "ensemble", f"--model.members=[{first}, {other}]")
    np.testing.assert_allclose(load_scores(out), (a.astype(np.float64) + b) / 2, rtol=1e-5, atol=1e-7)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["method"] == "ensemble" and len(meta["members"]) == 2 and meta["finalized"] is True
    assert (out / "influence.png").stat().st_size > 0 and (out / "report.md").stat().st_size > 0
    generated = attribute(tiny_run, "member_c", "kfac", f"--model.checkpoint={second}")  # its own queries
    with pytest.raises(ConfigError, match="other query images.*--model.queries.file="):
        attribute(tiny_run, "refused_queries", "ensemble", f"--model.members=[{first}, {generated}]")
    pixel = attribute(tiny_run, "member_pixel", "pixel")
    with pytest.raises(ConfigError, match="has method 'pixel' but"):
        attribute(tiny_run, "refused_method", "ensemble", f"--model.members=[{first}, {pixel}]")
    with pytest.raises(ConfigError, match="two or more finished attribute.py run folders"):
        attribute(tiny_run, "refused_one", "ensemble", f"--model.members=[{first}]")
    with pytest.raises(ConfigError, match="holds no attribute.py run"):
        attribute(tiny_run, "refused_missing", "ensemble", f"--model.members=[{first}, {root / 'nothing'}]")


def test_checkpoints_flag_scores_each_model_on_the_same_queries_and_writes_their_mean(tiny_run):
    root, _ = tiny_run
    final = root / "run" / "checkpoints" / "last.ckpt"
    step = perturbed_checkpoint(root, root / "run" / "step_10" / "model.ckpt")
    flag = f"--checkpoints=[{final}, {step}]"
    out = attribute(tiny_run, "checkpoints", "kfac", flag)
    first, second = out / "members" / "0_last", out / "members" / "1_step_10"
    alone = attribute(tiny_run, "final_alone", "kfac")  # the first member is an ordinary run of the final weights
    np.testing.assert_array_equal(load_scores(first), load_scores(alone))
    a, b = load_scores(first), load_scores(second)
    assert not np.allclose(a, b)
    assert torch.equal(torch.load(first / "queries.pt")["images"], torch.load(second / "queries.pt")["images"])
    np.testing.assert_allclose(load_scores(out), (a.astype(np.float64) + b) / 2, rtol=1e-5, atol=1e-7)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["method"] == "ensemble" and meta["finalized"] is True
    assert [m["checkpoint"] for m in meta["members"]] == [str(final), str(step)]
    assert (out / "influence.png").stat().st_size > 0
    attribute(tiny_run, "checkpoints", "kfac", flag)  # rerun: every run resumes finished, nothing changes
    np.testing.assert_allclose(load_scores(out), (a.astype(np.float64) + b) / 2, rtol=1e-5, atol=1e-7)
    assert json.loads((second / "metadata.json").read_text())["finalized"] is True
    with pytest.raises(ConfigError, match="not both"):
        attribute(tiny_run, "refused_both", "kfac", flag, f"--model.checkpoint={final}")
    with pytest.raises(ConfigError, match="drop --method ensemble"):
        attribute(tiny_run, "refused_ensemble", "ensemble", flag)
    with pytest.raises(ConfigError, match="averages two or more models"):
        attribute(tiny_run, "refused_one", "kfac", f"--checkpoints=[{final}]")


def test_continuation_scores_the_model_and_its_continued_weights_and_writes_their_mean(tiny_run, capsys):
    root, _ = tiny_run
    final = root / "run" / "checkpoints" / "last.ckpt"
    flag = "--continuation.steps=[2, 4]"
    out = attribute(tiny_run, "continuation", "kfac", flag)
    folder = out / "members" / "continuation"
    settings = json.loads((folder / "continuation.json").read_text())
    saved = torch.load(final, weights_only=False)
    assert settings["lr"] == saved["hyper_parameters"]["optimizer"]["lr"]  # the run's own peak learning rate
    assert settings["batch_size"] == saved["datamodule_hyper_parameters"]["batch_size"]
    ddpm = load_ddpm_module(final)
    data = AttributionDataModule(dataset="digits", subset_file=str(root / "run" / "subset.txt"))
    data.setup("predict")
    states = continue_training(ddpm, data.dataset, [2, 4], settings["lr"], settings["batch_size"], 10, 0,
                               settings["weight_decay"], tuple(settings["betas"]))
    for n, state in zip((2, 4), states):  # the checkpoint holds the continued weights and nothing else changed
        written = torch.load(folder / f"step_{n}" / "model.ckpt", weights_only=False)
        assert written["hyper_parameters"] == saved["hyper_parameters"]
        for name, value in state.items():
            assert torch.equal(written["state_dict"][f"unet.{name}"], value), name
    members = [out / "members" / name for name in ("0_last", "1_step_2", "2_step_4")]
    scores = [load_scores(m).astype(np.float64) for m in members]
    np.testing.assert_array_equal(scores[0], load_scores(attribute(tiny_run, "continuation_alone", "kfac")))
    assert not np.allclose(scores[0], scores[2])
    np.testing.assert_allclose(load_scores(out), sum(scores) / 3, rtol=1e-5, atol=1e-7)
    written_at = (folder / "step_2" / "model.ckpt").stat().st_mtime_ns
    attribute(tiny_run, "continuation", "kfac", flag)  # rerun: the continuation is reused, the runs resume
    assert (folder / "step_2" / "model.ckpt").stat().st_mtime_ns == written_at
    with pytest.raises(ConfigError, match=r"other settings \(lr\).*delete that folder"):
        attribute(tiny_run, "continuation", "kfac", flag, "--continuation.lr=1e-4")
    with pytest.raises(ConfigError, match="not both"):
        attribute(tiny_run, "refused_both_kinds", "kfac", flag, f"--checkpoints=[{final}, {final}]")
    config = root / "continuation.yaml"  # a config asking for a continuation, overridden by --checkpoints
    config.write_text(tiny_run[1].read_text() + "continuation:\n  steps: [2]\n")
    step = perturbed_checkpoint(root, root / "run" / "step_10" / "model.ckpt")
    capsys.readouterr()
    saved = attribute((root, config), "config_continuation", "kfac", f"--checkpoints=[{final}, {step}]")
    assert "instead of the config's continuation" in capsys.readouterr().err
    assert sorted(p.name for p in (saved / "members").iterdir()) == ["0_last", "1_step_10"]
    pixel = attribute(tiny_run, "pixel_continuation", "pixel", flag)  # a config written for K-FAC serves pixel too
    assert "does not use the diffusion model" in capsys.readouterr().err and not (pixel / "members").exists()


def test_continuation_of_a_pipeline_folder_needs_a_learning_rate_and_writes_pipeline_folders(tiny_run, capsys):
    root, _ = tiny_run
    pipeline = export_pipeline(load_ddpm_module(root / "run" / "checkpoints" / "last.ckpt"), root / "pipeline")
    model = f"--model.checkpoint={pipeline}"
    alone = attribute(tiny_run, "pipeline_alone", "kfac", model, "--continuation.steps=[2]")  # no lr: the model alone
    assert "does not save its training learning rate: attributing the model alone" in capsys.readouterr().err
    assert not (alone / "members").exists() and json.loads((alone / "metadata.json").read_text())["finalized"]
    out = attribute(tiny_run, "pipeline_continuation", "kfac", model, "--continuation.steps=[2]",
                    "--continuation.lr=1e-3", "--continuation.batch_size=16")
    member = out / "members" / "continuation" / "step_2"
    assert (member / "unet").is_dir() and (member / "scheduler").is_dir()
    first, second = (load_scores(out / "members" / name).astype(np.float64) for name in ("0_pipeline", "1_step_2"))
    np.testing.assert_allclose(load_scores(out), (first + second) / 2, rtol=1e-5, atol=1e-7)


def test_checkpoints_under_ddp_give_the_one_process_mean(tiny_run):
    """With ``strategy=ddp`` Lightning reruns the script in a second process, which runs the same loop of members:
    every member and the mean are scored by both processes, and the scores match one process's."""
    root, config = tiny_run
    step = perturbed_checkpoint(root, root / "ddp_models" / "step_10" / "model.ckpt")
    flag = f"--checkpoints=[{root / 'run' / 'checkpoints' / 'last.ckpt'}, {step}]"
    one = attribute(tiny_run, "checkpoints_one_process", "kfac", flag)
    out = root / "checkpoints_ddp"
    proc = run_script("attribute.py", "--config", str(config), flag, f"--model.output_dir={out}",
                      f"--trainer.default_root_dir={out}", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[--checkpoints] member") == 2  # progress from the first process only
    for member in ("0_last", "1_step_10"):
        assert json.loads((out / "members" / member / "metadata.json").read_text())["num_devices"] == 2
    expected = load_scores(one)
    np.testing.assert_allclose(load_scores(out), expected, atol=1e-2 * np.abs(expected).max())


def test_continuation_under_ddp_trains_once_and_gives_the_one_process_mean(tiny_run):
    """The first process trains the continuation before Lightning starts the second, which finds it and reuses it."""
    root, config = tiny_run
    flag = "--continuation.steps=[3]"
    one = attribute(tiny_run, "continuation_one_process", "kfac", flag)
    out = root / "continuation_ddp"
    proc = run_script("attribute.py", "--config", str(config), flag, f"--model.output_dir={out}",
                      f"--trainer.default_root_dir={out}", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("[--continuation] training 3 more steps") == 1
    a, b = (torch.load(run / "members" / "continuation" / "step_3" / "model.ckpt", weights_only=False)["state_dict"]
            for run in (one, out))
    for name in a:  # the seed fixes the continuation (up to float rounding: the processes use other thread counts)
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5)
    expected = load_scores(one)
    np.testing.assert_allclose(load_scores(out), expected, atol=1e-2 * np.abs(expected).max())


def test_trak_memory_estimate_counts_the_projection_matrix_and_no_curvature(tiny_run, capsys):
    out = attribute(tiny_run, "trak_memory", "trak")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Memory estimate"))
    meta = json.loads((out / "metadata.json").read_text())
    from lit_attr.attribution.memory import human
    from lit_attr.baselines.projection import RandomProjector
    from lit_attr.curvature.layers import gradient_shapes, select_kfac_modules
    from lit_attr.pipeline_io import load_ddpm_module

    ddpm = load_ddpm_module(meta["checkpoint"])
    num_params = sum(out * cols for out, cols in gradient_shapes(select_kfac_modules(ddpm.attribution_unet)).values())
    projector = RandomProjector(num_params, meta["projection"]["dim"])
    assert projector.resident_bytes == meta["projection"]["dim"] * num_params * 4  # cached whole at this size
    assert f"projection matrix {human(projector.resident_bytes)}" in line and "curvature 0 B" in line


def test_free_memory_is_read_after_collecting_the_garbage_of_earlier_passes():
    """A finished pass's Trainer and module form reference cycles; their tensors must not count as used memory
    when the next pass of the same process (a benchmark's next method or ensemble member) checks what is free."""
    import gc
    import weakref

    from lit_attr.attribution.memory import available_memory

    class Pass:  # stands for a Trainer <-> module cycle holding a projection matrix
        pass

    gc.disable()  # no automatic collection between the del and the check
    try:
        finished = Pass()
        finished.cycle, finished.matrix = finished, torch.zeros(1024, 1024)
        alive = weakref.ref(finished)
        del finished
        assert alive() is not None  # only the cycle collector frees it
        available_memory(torch.device("cpu"))
        assert alive() is None
    finally:
        gc.enable()


def test_free_memory_is_read_after_the_heap_is_trimmed(monkeypatch):
    """glibc keeps freed heap pages counted as used; ``malloc_trim`` must run before MemAvailable is read."""
    from lit_attr.attribution import memory

    calls = []

    class FakeLibc:
        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return 1

    monkeypatch.setattr(memory, "_libc", lambda: FakeLibc())
    monkeypatch.setattr(memory, "_meminfo_available", lambda: calls.append(("read", None)) or 10 ** 9)
    assert memory.available_memory(torch.device("cpu")) == 10 ** 9
    assert calls == [("trim", 0), ("read", None)]
    monkeypatch.setattr(memory, "_libc", lambda: None)  # no glibc: nothing to trim, still a reading
    assert not memory.release_free_heap() and memory.available_memory(torch.device("cpu")) == 10 ** 9


def test_float_copy_of_the_query_store_is_counted_and_changes_no_score(tiny_run, capsys):
    """Default: the int8 store's float32 copy is kept (and shown in the estimate); 0 MiB: none; same scores."""
    copied = attribute(tiny_run, "float_copy", "kfac")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Memory estimate"))
    assert "int8 + float32 copy)" in line
    plain = attribute(tiny_run, "no_float_copy", "kfac", "--model.float_query_cache_mib=0")
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("Memory estimate"))
    assert "float32 copy" not in line
    np.testing.assert_array_equal(load_scores(copied), load_scores(plain))
