"""The LDS harness: common seeding, true measurements, variant scoring, and evaluate.py end to end."""

import json
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from callbacks.curvature import KFACCallback
from callbacks.score_writer import ScoreWriter
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.constants import TRAK_SCORES_FILE
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.data.index_files import read_index_file, write_index_file
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import expand_draws, loss_per_draw, unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.evaluation import training
from lit_attr.evaluation.config import BenchmarkConfig, MethodConfig, RemovalConfig, TrueMeasurementConfig
from lit_attr.evaluation.layout import BenchmarkLayout
from lit_attr.evaluation.plans import ensemble_jobs, full_job
from lit_attr.evaluation.selection import cross_fitted
from lit_attr.evaluation.true_measurements import STREAM, measure_queries
from lit_attr.evaluation.variants import VariantInfluenceModule, load_variant_scores
from lit_attr.methods.influence import KFACInfluence
from lit_attr.methods.trak import DTRAK
from lit_attr.storage import load_scores
from tests.helpers import ROOT, run_script, run_scripts_together, tiny_open_clip

TINY_RECIPE = ROOT / "configs" / "lds" / "tiny_train.yaml"


def record_training_streams(monkeypatch, tmp_path, subset, seed, name):
    """Train the tiny recipe 3 steps on ``subset``; returns initial weights and per-step (positions, t, noise)."""
    write_index_file(tmp_path / f"{name}.txt", subset)
    position_of = {index: pos for pos, index in enumerate(sorted(subset))}
    steps, initial = [], {}
    original_step = DDPMModule.training_step

    def recording_step(self, batch, batch_idx):
        if not initial:
            initial.update({k: v.clone() for k, v in self.unet.state_dict().items()})
        positions = [position_of[int(i)] for i in batch["index"]]
        rng = torch.get_rng_state()
        t = torch.randint(0, self.schedule.num_timesteps, (len(positions),))
        noise = torch.randn_like(batch["image"])
        torch.set_rng_state(rng)  # training_step draws the very same numbers next
        steps.append((positions, t, noise))
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(DDPMModule, "training_step", recording_step)
    training.train_model(TINY_RECIPE, tmp_path / name, max_steps=3, seed=seed, subset_file=tmp_path / f"{name}.txt")
    monkeypatch.setattr(DDPMModule, "training_step", original_step)
    return initial, steps


def test_common_seed_gives_equal_streams_on_equal_size_subsets(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    a, b = (sorted(rng.choice(1797, 200, replace=False).tolist()) for _ in range(2))
    init_a, steps_a = record_training_streams(monkeypatch, tmp_path, a, seed=7, name="a")
    init_b, steps_b = record_training_streams(monkeypatch, tmp_path, b, seed=7, name="b")
    init_c, steps_c = record_training_streams(monkeypatch, tmp_path, a, seed=8, name="c")
    assert len(steps_a) == len(steps_b) == 3
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    for (pa, ta, na), (pb, tb, nb) in zip(steps_a, steps_b):
        assert pa == pb and torch.equal(ta, tb) and torch.equal(na, nb)
    # another seed changes the initialisation and every stream
    assert not all(torch.equal(init_a[k], init_c[k]) for k in init_a)
    assert steps_a[0][0] != steps_c[0][0] and not torch.equal(steps_a[0][1], steps_c[0][1])
    assert (tmp_path / "a" / training.MODEL_FILE).exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_lds")
    run = training.train_model(TINY_RECIPE, root / "full", max_steps=6, seed=0)
    write_index_file(root / "subset.txt", range(64))
    return run


def test_true_measurements_use_common_draws_and_match_a_direct_computation(tiny_model):
    ddpm = tiny_model.module
    images = ddpm.generate(3, seed=0, num_steps=5).images
    names = ["loss", "elbo", "loss_at_t7"]
    values = measure_queries(ddpm, images, names, num_draws=8, seed=3)
    assert values.shape == (3, 3, 3)
    assert torch.equal(values, measure_queries(ddpm, images, names, num_draws=8, seed=3))
    assert torch.equal(values[:, 2:], measure_queries(ddpm, images, ["loss_at_t7"], num_draws=8, seed=3))
    assert not torch.equal(values, measure_queries(ddpm, images, names, num_draws=8, seed=4))
    halves = []
    for h in range(2):
        t, noise = draw_for_batch(torch.arange(3), 4, (1, 8, 8), 1000, 3, f"{STREAM}/{h}", DrawScheme.STRATIFIED)
        x0, tf, eps = expand_draws(images, t, noise)
        with torch.no_grad():
            mse = loss_per_draw(unet_eps_model(ddpm.attribution_unet), ddpm.schedule, x0, tf, eps).double().view(3, 4)
        elbo = (mse * 64 * ddpm.schedule.elbo_weights().double()[t] * 1000).mean(1)
        x0, tf, eps = expand_draws(images, torch.full_like(t, 7), noise)  # l_7: the same noise at t = 7
        with torch.no_grad():
            at_7 = loss_per_draw(unet_eps_model(ddpm.attribution_unet), ddpm.schedule, x0, tf, eps).double().view(3, 4)
        halves.append(torch.stack([mse.mean(1), elbo, at_7.mean(1)]))
    torch.testing.assert_close(values[1], halves[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(values[2], halves[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(values[0], (halves[0] + halves[1]) / 2, rtol=1e-5, atol=0)
    with pytest.raises(ConfigError, match="outside the model's timesteps 0..999"):
        measure_queries(ddpm, images, ["loss_at_t1000"], num_draws=8, seed=3)


def test_bad_measurement_settings_are_refused_by_the_config():
    with pytest.raises(ConfigError, match="loss, elbo and loss_at_t<t>"):
        TrueMeasurementConfig(measurements=["loss", "trajectory_logprob"])
    with pytest.raises(ConfigError, match="without repeats"):
        MethodConfig(measurements=["loss", "loss"])
    with pytest.raises(ConfigError, match="removal.measurement='elbo' is not among"):
        BenchmarkConfig(true_measurements=TrueMeasurementConfig(measurements=["loss"]),
                        removal=RemovalConfig(queries=[0], methods=["kfac"], measurement="elbo"))
    with pytest.raises(ConfigError, match="reference_method='trak' is not one of the methods"):
        BenchmarkConfig(reference_method="trak")
    with pytest.raises(ConfigError, match="ensemble_seeds is supported for kinds kfac, trak and dtrak only"):
        MethodConfig(name="pixel", kind="pixel", ensemble_seeds=[1])


def test_saved_root_config_reloads_to_the_same_benchmark_with_its_nulls(tmp_path):
    """The workers and the probes reload ``<root>/config.yaml``: a ``null`` dropped from it came back as the
    default (``extra_seed_subsets: null`` -> 16), so workers skipped the second seed of subsets 16+ and the
    probes read those subsets' targets from one seed."""
    from evaluate import benchmark_config, build_parser, resolved_config_text, subparser

    parser = build_parser()
    args = parser.parse_args(["run", "--config", str(ROOT / "configs" / "lds" / "digits.yaml"),
                              f"--root={tmp_path}", "--subsets.num_subsets=20"])
    given = benchmark_config(parser.instantiate(args)["run"])
    assert given.retraining.extra_seed_subsets is None and given.queries.num_sampling_steps is None
    saved = tmp_path / "config.yaml"
    saved.write_text(resolved_config_text(subparser(parser, "run"), args["run"]))
    reloaded = benchmark_config(parser.instantiate(parser.parse_args(["report", "--config", str(saved)]))["report"])
    assert reloaded == given


def test_ensemble_seeds_must_differ_from_the_full_model_seed(tmp_path):
    config, layout = BenchmarkConfig(root=str(tmp_path)), BenchmarkLayout(tmp_path)
    with pytest.raises(ConfigError, match="must be distinct and differ from retraining.base_seed"):
        ensemble_jobs(config, layout, [0, 1], [0, 3])
    with pytest.raises(ConfigError, match="must be distinct"):
        ensemble_jobs(config, layout, [0, 1], [3, 3])
    jobs = ensemble_jobs(config, layout, [0, 1], [3, 4])
    assert [j.job.seed for j in jobs] == [3, 4] and jobs[0].job.run_dir == tmp_path / "ensemble" / "seed_3"
    full = full_job(config, layout, [0, 1])
    assert jobs[0].steps == full.steps and jobs[0].job.indices_file == full.job.indices_file
    assert read_index_file(full.job.indices_file) == [0, 1]


def _trainer():
    return L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                     enable_model_summary=False,
                     callbacks=[KFACCallback(num_draws=2, progressbar=False), ScoreWriter()])


def test_variant_columns_equal_separate_influence_runs(tiny_model, tmp_path):
    """Group 0 equals attribute.py's scores; group g's stream, each measurement and damping likewise."""
    common = dict(checkpoint=str(tiny_model.checkpoint), queries={"num_generated": 2, "num_sampling_steps": 5},
                  measurement={"num_draws": 4}, num_draws=2, seed=1, query_compression="none")
    data = lambda: AttributionDataModule(subset_file=str(tiny_model.checkpoint.parents[1] / "subset.txt"),  # noqa: E731
                                         batch_size=32)
    variants = VariantInfluenceModule(output_dir=str(tmp_path / "variants"),
                                      measurements=["loss", "elbo", "loss_at_t40"], dampings=[1e-3, 1e-1],
                                      num_groups=2, **common)
    _trainer().predict(variants, datamodule=data(), return_predictions=False)
    scores = load_variant_scores(tmp_path / "variants")
    assert scores.shape == (64, 2, 3, 2, 2)
    for measurement, m, timestep, dampings in (("loss", 0, None, ((1e-3, 0), (1e-1, 1))),
                                               ("elbo", 1, None, ((1e-3, 0), (1e-1, 1))),
                                               ("loss_at_timestep", 2, 40, ((1e-3, 0),))):
        for damping, d in dampings:
            single = InfluenceModule(output_dir=str(tmp_path / f"{measurement}_{d}"), damping=damping,
                                     **{**common, "measurement": {"num_draws": 4, "measurement": measurement,
                                                                  "timestep": timestep}})
            _trainer().predict(single, datamodule=data(), return_predictions=False)
            np.testing.assert_allclose(scores[:, 0, m, d], load_scores(tmp_path / f"{measurement}_{d}"),
                                       rtol=2e-3, atol=1e-6 * np.abs(scores[:, 0, m, d]).max())
    assert not np.allclose(scores[:, 0], scores[:, 1])  # group 1 uses other draws


def smoke_args(tmp_path, *extra):
    return ["evaluate.py", "run", "--config", "configs/lds/smoke.yaml", f"--root={tmp_path / 'bench'}", *extra]


def test_evaluate_smoke_benchmark_end_to_end_and_resume(tmp_path):
    proc = run_script(*smoke_args(tmp_path, "--retraining.workers=2"), threads=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bench = tmp_path / "bench"
    results = json.loads((bench / "results.json").read_text())
    assert results["num_subsets"] == 4 and results["num_subsets_with_two_seeds"] == 3
    kfac_rows = 2 * 3 * 2 * 3  # S x approx measurement x damping x target
    assert len(results["lds"]) == kfac_rows + 2 * 3 + 3 + 3  # + TRAK (2 dampings), D-TRAK, pixel
    table = results["substitution"][0]  # per-timestep loss l_300 as a target and as the scores' measurement
    assert table["method"] == "kfac" and table["approx"] == table["targets"] == ["loss", "elbo", "loss_at_t300"]
    assert all(c["target"] != "loss_at_t300" for c in results["comparison"])
    paired = {(c["method"], c["target"]): c["vs_reference"] for c in results["comparison"]}
    assert paired["kfac", "loss"] == {"method": "kfac", "mean": 0.0, "stderr": 0.0}  # reference: the first method
    # the bootstrap over subsets: on every LDS row; in the comparison for the held-out LDS and the paired difference
    assert all(r["subset_se"] >= 0 and "subset_replicates" not in r for r in results["lds"])
    reference_row = next(c for c in results["comparison"] if (c["method"], c["target"]) == ("kfac", "loss"))
    assert reference_row["vs_reference_subset_se"] == 0.0 and reference_row["subset_se"] > 0
    trak_sweep = [r for r in results["lds"] if (r["method"], r["target"]) == ("trak", "loss")]
    kfac_sweep = [r for r in results["lds"] if (r["method"], r["target"], r["approx"], r["num_draws"]) ==
                  ("kfac", "loss", "loss", trak_sweep[0]["num_draws"])]  # same S
    trak_held_out, kfac_held_out = (cross_fitted([SimpleNamespace(**r) for r in sweep])  # damping not chosen on them
                                    for sweep in (trak_sweep, kfac_sweep))
    assert paired["trak", "loss"]["mean"] == pytest.approx(np.mean(np.array(trak_held_out.per_query)
                                                                   - np.array(kfac_held_out.per_query)))
    trak_row = next(c for c in results["comparison"] if (c["method"], c["target"]) == ("trak", "loss"))
    assert trak_row["selected"]["dampings"] == trak_held_out.dampings
    assert all(len(r["folds"]) == 2 and len(r["folds"][0]) == len(r["per_query"]) for r in results["lds"])
    spread = [r for r in results["lds"] if r["method"] == "kfac" and r["num_draws"] == 2]  # 4 groups: 2 sets of 2
    assert spread and all(len(r["draw_sets"]["lds"]) == 2 and r["draw_sets"]["lds"][0] == pytest.approx(r["mean"])
                          and r["draw_sets"]["sd"] == pytest.approx(np.std(r["draw_sets"]["lds"], ddof=1))
                          for r in spread)
    assert not any("draw_sets" in r for r in results["lds"] if r["method"] == "kfac" and r["num_draws"] == 4)
    assert all(-1 <= r["mean"] <= 1 for r in results["lds"])
    assert {(c["method"], c["approx"]) for c in results["comparison"]} >= {("dtrak", "sqnorm"), ("pixel", "pixel"),
                                                                           ("trak", "loss"), ("kfac", "elbo")}
    assert "oracle_lds" in results["diagnostics"]["loss"] and [r["method"] for r in results["removal"]] == ["kfac", "pixel"]
    assert results["removal"][1]["vs_reference"]["mean"] == pytest.approx(
        np.mean(np.array(results["removal"][1]["per_query"]) - np.array(results["removal"][0]["per_query"])))
    for name in ("results.md", "lds_bars.png", "scatter.png", "damping.png", "substitution.png"):
        assert (bench / name).stat().st_size > 0
    assert list((bench / "tensorboard").iterdir())
    assert "| kfac | independent | 4 | elbo | loss |" in proc.stdout
    done = sorted(bench.glob("retrain/subset_*/seed_*/done.json"))
    assert len(done) == 7
    stamps = [p.stat().st_mtime_ns for p in done]
    again = run_script(*smoke_args(tmp_path), threads=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[lds] 7/7 models already done; training 0." in again.stdout
    for method in ("kfac", "trak", "dtrak", "pixel"):
        assert f"{method}: already scored" in again.stdout
    # a changed method under the same name: new dampings only redo TRAK's closed form; other settings are refused
    config = yaml.safe_load((ROOT / "configs" / "lds" / "smoke.yaml").read_text())
    config["methods"][1]["dampings"] = [1.0e-2]
    (tmp_path / "dampings.yaml").write_text(yaml.safe_dump(config))
    swept = run_script("evaluate.py", "run", "--config", str(tmp_path / "dampings.yaml"), f"--root={bench}")
    assert swept.returncode == 0 and "trak: closed form recomputed" in swept.stdout, swept.stderr[-3000:]
    for index, change, stored in ((1, {"projection_dim": 32}, "'dim': 64"),
                                  (3, {"kind": "clip", "clip_weights": "weights.bin"}, "'pixel'"),
                                  (0, {"seed": 5}, "'seed': (0, 5)")):
        changed = yaml.safe_load((ROOT / "configs" / "lds" / "smoke.yaml").read_text())
        changed["methods"][index].update(change)
        (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
        refused = run_script("evaluate.py", "run", "--config", str(tmp_path / "changed.yaml"), f"--root={bench}")
        assert refused.returncode == 2 and "made with other settings" in refused.stderr and stored in refused.stderr
    # every other method kind and Hessian variant plugs into the same benchmark (only the new methods are scored)
    clip_config, clip_weights, _ = tiny_open_clip(tmp_path)
    extended = yaml.safe_load((ROOT / "configs" / "lds" / "smoke.yaml").read_text())
    variant = {"draws_per_group": 1, "num_groups": 2, "report_draws": [2], "measurements": ["loss"],
               "query_num_draws": 4, "curvature": {"num_draws": 1}, "batch_size": 256}
    extended["methods"] += [
        {"name": "clip", "kind": "clip", "clip_model": str(clip_config), "clip_weights": str(clip_weights)},
        {"name": "kfac_empirical_reduce", **variant,
         "curvature": {"num_draws": 1, "fisher_type": "empirical", "kfac_approx": "reduce"}},
        {"name": "ekfac", **variant, "curvature": {"num_draws": 1, "eigenvalue_correction": True}},
        {"name": "kfac_continued", **variant, "ensemble_continuation": [2]},  # + 2 more steps from the full model
        {"name": "kfac_ensemble", **variant, "ensemble_seeds": [7]},
        {"name": "kfac_late", **variant, "ensemble_steps": [2]},  # + the checkpoint after step 2 of the 4
        {**extended["methods"][2], "name": "dtrak_late", "ensemble_steps": [2]},  # D-TRAK, the same two models
        {"name": "from_attribute_py", "attribute_config": "configs/tiny/attribute.yaml"}]  # one group of S = 4
    (tmp_path / "extended.yaml").write_text(yaml.safe_dump(extended))
    more = run_script("evaluate.py", "run", "--config", str(tmp_path / "extended.yaml"), f"--root={bench}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "[lds] 7/7 models already done" in more.stdout and "kfac: already scored" in more.stdout
    compared = {c["method"] for c in json.loads((bench / "results.json").read_text())["comparison"]}
    assert {"clip", "kfac_empirical_reduce", "ekfac", "kfac_ensemble", "kfac_late", "dtrak_late",
            "from_attribute_py", "kfac_continued"} <= compared
    one_group = [r for r in json.loads((bench / "results.json").read_text())["lds"]
                 if r["method"] == "from_attribute_py"]
    assert len(one_group) == 3 and all(r["num_draws"] == 4 and np.isnan(r["split_half"]["mean"]) for r in one_group)
    assert "[ensemble kfac_ensemble] 0/1 models already done; training 1." in more.stdout
    assert (bench / "ensemble" / "seed_7" / "done.json").exists()  # trained on all data with seed 7
    ensemble_dir = bench / "methods" / "kfac_ensemble"
    member = load_variant_scores(ensemble_dir / "ensemble" / "seed_7")
    alone = load_variant_scores(ensemble_dir)
    assert not np.allclose(member, alone)  # another model
    (ensemble_set,) = KFACInfluence(MethodConfig(**extended["methods"][-4])).score_sets(ensemble_dir)
    np.testing.assert_allclose(ensemble_set.scores, (member + alone)[:, :2].mean(1) / 2, rtol=1e-6)
    # the checkpoint ensemble: one rerun of the full model (same seed: the same weights) saved step 2's checkpoint
    assert "[checkpoints kfac_late] 0/1 models already done; training 1." in more.stdout
    assert "the rerun's final weights differ from the full model's by at most 0.00e+00" in more.stdout
    late_dir = bench / "methods" / "kfac_late"
    step_member = load_variant_scores(late_dir / "ensemble" / "step_2")
    assert not np.allclose(step_member, load_variant_scores(late_dir))
    (late_set,) = KFACInfluence(MethodConfig(**extended["methods"][-3])).score_sets(late_dir)
    np.testing.assert_allclose(late_set.scores, (step_member + load_variant_scores(late_dir))[:, :2].mean(1) / 2,
                               rtol=1e-6)
    # the continuation ensemble: the full model trained 2 more steps (no checkpoints of the run needed)
    assert (bench / "ensemble" / "continuation_kfac_continued" / "step_2" / "model.ckpt").exists()
    continued_dir = bench / "methods" / "kfac_continued"
    continued = load_variant_scores(continued_dir / "ensemble" / "continued_2")
    assert not np.allclose(continued, load_variant_scores(continued_dir))
    (continued_set,) = KFACInfluence(MethodConfig(**extended["methods"][-5])).score_sets(continued_dir)
    np.testing.assert_allclose(continued_set.scores,
                               (continued + load_variant_scores(continued_dir))[:, :2].mean(1) / 2, rtol=1e-6)
    dtrak_dir = bench / "methods" / "dtrak_late"  # each member its own closed form, then their mean (TRAK's ensemble)
    alone, step = (np.load(d / TRAK_SCORES_FILE)["S2"] for d in (dtrak_dir, dtrak_dir / "ensemble" / "step_2"))
    assert not np.allclose(alone, step)
    (dtrak_set,) = DTRAK(MethodConfig(**extended["methods"][-2])).score_sets(dtrak_dir)
    np.testing.assert_allclose(dtrak_set.scores, (alone + step) / 2, rtol=1e-6)
    factors = {p.name for p in (bench / "curvature").glob("*.safetensors")}  # one K-FAC per Hessian setting
    assert {"mc_expand_S1.safetensors", "empirical_reduce_S1.safetensors", "mc_expand_S1_ekfac.safetensors"} <= factors
    assert [p.stat().st_mtime_ns for p in done] == stamps
    probed, seeds, common, newton, continuation, members, removal = run_scripts_together(  # read-only, side by side
        ("benchmarks/probe_functions.py", str(bench), "--num_draws=2", "--query_draws=2", "--dampings", "1e-3"),
        ("benchmarks/probe_seeds.py", str(bench), "--resamples=20"),
        ("benchmarks/probe_common.py", str(bench), "--all-dampings"),
        ("benchmarks/probe_newton.py", str(bench), "--num_draws=2", "--query_draws=2", "--delta_dampings", "1e-2",
         "--alphas", "0", "1", "--random_control"),
        ("benchmarks/probe_continuation.py", str(bench), "--steps", "1", "2", "--num_draws=2", "--query_draws=2"),
        ("benchmarks/probe_members.py", str(bench), "--method=kfac_continued", "--draws=2", "--resamples=20"),
        ("benchmarks/probe_removal_sets.py", str(bench)))
    assert probed.returncode == 0, probed.stderr[-3000:]
    rows = [line for line in probed.stdout.splitlines() if line.startswith("| loss |") or line.startswith("| sqnorm |")]
    assert len(rows) == 2 * 2 * 2  # training function x query function x (K-FAC 1e-3, identity)
    assert all(-1 <= float(row.split("|")[4].split("±")[0]) <= 1 for row in rows)
    assert "score columns agree at Spearman" in probed.stdout
    assert seeds.returncode == 0, seeds.stderr[-3000:]
    assert "3 subsets x 2 seeds; seed reliability" in seeds.stdout  # the subset without its second seed is left out
    assert "| method | S | seed 0 | seed 1 | mean of 2 seeds |" in seeds.stdout
    assert any(line.startswith("| kfac | 4 | ") and line.count("[±") == 3 for line in seeds.stdout.splitlines())
    assert common.returncode == 0, common.stderr[-3000:]
    assert "4 subsets, " in common.stdout and "shared-effect ceiling" in common.stdout  # with one seed or two
    kfac_rows = [line for line in common.stdout.splitlines() if line.startswith("| kfac | 4 | ")]
    assert len(kfac_rows) >= 2 and all(line.count("±") == 4 for line in kfac_rows)  # one row per stored damping
    assert newton.returncode == 0, newton.stderr[-3000:]
    newton_rows = [line.split("|") for line in newton.stdout.splitlines() if line.startswith("| gbar | 0.01 |")]
    assert [row[4].strip() for row in newton_rows] == ["0", "1"]  # alpha 0 is the uncorrected query gradient
    assert newton_rows[0][6].strip() == newton.stdout.split("reference: loss query ")[1].split(";")[0]
    assert sum(line.startswith("| random | 0.01 |") for line in newton.stdout.splitlines()) == 2
    assert continuation.returncode == 0, continuation.stderr[-3000:]
    continued_rows = [line.split("|") for line in continuation.stdout.splitlines()
                      if line.startswith(("| final weights |", "| + 2 continuation members |", "| member 1 alone"))]
    assert len(continued_rows) == 3 and all(-1 <= float(r[2].split("±")[0]) <= 1 for r in continued_rows)
    assert continued_rows[0][3].strip() == "+0.000 ± 0.000"
    assert members.returncode == 0, members.stderr[-3000:]
    member_rows = {r[1].strip(): r for r in (line.split("|") for line in members.stdout.splitlines()
                                             if line.startswith("| "))
                   if r[1].strip() in ("model", "continued_2", "model + continued_2")}
    assert list(member_rows) == ["model", "continued_2", "model + continued_2"]
    assert member_rows["model + continued_2"][5].strip() == "+0.000 ± 0.000 [± 0.000]"
    reported = next(r for r in json.loads((bench / "results.json").read_text())["lds"]  # the report's own number
                    if r["method"] == "kfac_continued" and r["target"] == "loss" and r["approx"] == "loss"
                    and r["default_damping"])
    assert member_rows["model + continued_2"][3].strip() == f"{reported['mean']:.3f}"
    assert removal.returncode == 0, removal.stderr[-3000:]
    removal_rows = {r[0]: r[1:] for r in (line.split() for line in removal.stdout.splitlines())
                    if r and r[0] in ("kfac", "pixel")}
    assert removal_rows["kfac"][0:9:3] == ["1.000", "1.000", "1.000"]  # the scores that picked kfac's set, found again
    overlap, predicted, measured = (float(removal_rows["pixel"][i]) for i in (0, 3, 6))
    assert 0 <= overlap <= 1 and predicted <= 1 + 1e-6  # no set of that size has a larger reference sum
    stored = {r["method"]: np.array(r["per_query"]) for r in json.loads((bench / "results.json").read_text())["removal"]}
    assert measured == pytest.approx(np.mean(stored["pixel"] / stored["kfac"]), abs=1e-3)
    share = run_script("evaluate.py", "retrain", "--config", "configs/lds/smoke.yaml", f"--root={bench}",
                       "--start=2", "--count=3")
    assert share.returncode == 0 and "[lds] 3/3 models already done" in share.stdout
    # the other seeding protocol on the same full model and scores: only the LDS models are trained
    other = run_script("evaluate.py", "run", "--config", "configs/lds/smoke.yaml", f"--root={tmp_path / 'indep'}",
                       f"--reuse={bench}", "--retraining.protocol=independent", "--removal.queries=[]")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "[full] 1/1 models already done" in other.stdout and "[lds] 0/7 models already done" in other.stdout
    assert "trak: already scored" in other.stdout
    assert json.loads((tmp_path / "indep" / "results.json").read_text())["protocol"] == "independent"


def test_bad_benchmark_input_fails_clearly(tmp_path):
    bench = tmp_path / "bench"
    refused = run_script("evaluate.py", "retrain", "--config", "configs/lds/smoke.yaml", f"--root={bench}")
    assert refused.returncode == 2 and "full model is not trained yet" in refused.stderr
    missing = run_script(*smoke_args(tmp_path, "--retraining.recipe=nowhere.yaml"))
    assert missing.returncode == 2 and "retraining.recipe nowhere.yaml does not exist" in missing.stderr
    config = yaml.safe_load((ROOT / "configs" / "lds" / "smoke.yaml").read_text())
    config["methods"][0]["report_draws"] = [3]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad = run_script("evaluate.py", "run", "--config", str(tmp_path / "bad.yaml"), f"--root={bench}")
    assert bad.returncode == 2 and "report_draws 3 must be draws_per_group=1 (one group" in bad.stderr
    config["methods"][0]["report_draws"] = [2]
    config["true_measurements"]["measurements"] = ["loss", "loss_at_tfinal"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    bad = run_script("evaluate.py", "run", "--config", str(tmp_path / "bad.yaml"), f"--root={bench}")
    assert bad.returncode == 2 and "loss_at_t<t> with a 0-based integer t" in bad.stderr
    assert not (bench / "results.json").exists()




def test_dtrak_gradients_are_squared_output_norm_gradients(tiny_model, tmp_path):
    from lit_attr.attribution.projected import ProjectedGradientModule
    from tests.reference import loop_per_example_gradients

    module = ProjectedGradientModule(checkpoint=str(tiny_model.checkpoint), output_dir=str(tmp_path),
                                     training_function="sqnorm", projection_dim=8, num_draws=3, seed=2)
    unet, schedule = module.ddpm.attribution_unet, module.ddpm.schedule
    unet.requires_grad_(True)
    x0, index = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([5, 9, 11, 200])
    batched = module._sqnorm_gradients(x0, index, 3, "train")
    t, noise = draw_for_batch(index, 3, (1, 8, 8), 1000, 2, "train", module.draw_scheme)

    def example_sqnorm(b):
        x_t = schedule.q_sample(x0[b:b + 1].expand(3, -1, -1, -1), t[b], noise[b])
        return unet(x_t, t[b]).sample.pow(2).flatten(1).mean(1).mean()

    expected = loop_per_example_gradients(module.kfac_modules, example_sqnorm, 4)
    for name in expected:
        torch.testing.assert_close(batched[name], expected[name], rtol=1e-4, atol=1e-6)
    # the D-TRAK function is not the loss: its gradient differs from the loss gradient
    loss_grads = module.training_gradients({"image": x0, "index": index})
    assert not torch.allclose(loss_grads, torch.cat([g.flatten(1) for g in batched.values()], 1), atol=1e-3)
