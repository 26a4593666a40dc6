"""LDS subsets, their manifest, the retraining plan and seeds; removal of top influences and its metric."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lit_attr.data.index_files import read_index_file
from lit_attr.errors import ConfigError, DataError, StoreMismatchError
from lit_attr.evaluation.job_share import JobShare
from lit_attr.metrics import RetrainingWithoutTopInfluences, random_removal, top_influence_removal
from lit_attr.metrics.retraining import remaining_positions
from lit_attr.evaluation.jobs import SeedingProtocol, job_done, mark_job_done, scale_steps, training_seed
from lit_attr.evaluation.config import (
    BenchmarkConfig,
    MethodConfig,
    QueriesConfig,
    RemovalConfig,
    RetrainingConfig,
    SubsetsConfig,
)
from lit_attr.evaluation.layout import BenchmarkLayout
from lit_attr.evaluation.plans import lds_jobs, plan_retraining, removal_jobs
from tests.helpers import ROOT
from lit_attr.evaluation.subsets import (
    create_subsets,
    read_subsets,
    sample_lds_subsets,
    subset_indices_path,
    subsets_path,
    write_subsets,
)


def test_subsets_reproducible_sized_and_independent_of_their_number():
    subsets = sample_lds_subsets(11, 4, fraction=0.5, seed=3)
    assert [len(s) for s in subsets] == [round(0.5 * 11)] * 4
    for s in subsets:
        assert s.dtype == np.int64 and (np.diff(s) > 0).all() and s.min() >= 0 and s.max() < 11
    again = sample_lds_subsets(11, 7, fraction=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(subsets, again[:4]))
    assert len({tuple(s) for s in again}) > 1
    other = sample_lds_subsets(11, 4, fraction=0.5, seed=4)
    assert any(not np.array_equal(a, b) for a, b in zip(subsets, other))
    assert [len(s) for s in sample_lds_subsets(100, 2, fraction=0.3)] == [30, 30]
    with pytest.raises(ConfigError, match="0 < fraction < 1"):
        sample_lds_subsets(10, 2, fraction=1.0)


def test_write_read_round_trip_with_stable_indices(tmp_path):
    stable = [100 + 2 * j for j in range(10)]
    subsets = create_subsets(tmp_path, num_train=10, num_subsets=3, fraction=0.4, seed=1, train_indices=stable)
    assert read_index_file(subset_indices_path(tmp_path, 2)) == [stable[j] for j in subsets[2]]
    assert all(np.array_equal(a, b) for a, b in zip(read_subsets(tmp_path), subsets))
    manifest = json.loads((subsets_path(tmp_path) / "manifest.json").read_text())
    assert (manifest["num_train"], manifest["fraction"], manifest["seed"], manifest["num_subsets"]) == (10, 0.4, 1, 3)
    assert set(manifest["files"]) == {"subset_000", "subset_001", "subset_002", "train_indices.txt"}
    subset_indices_path(tmp_path, 1).write_text("1\n2\n")
    with pytest.raises(DataError, match="SHA-256"):
        read_subsets(tmp_path)


def test_manifest_refuses_a_mismatched_overwrite(tmp_path):
    create_subsets(tmp_path, num_train=10, num_subsets=4, seed=0)
    manifest = subsets_path(tmp_path) / "manifest.json"
    before = manifest.stat().st_mtime_ns
    create_subsets(tmp_path, num_train=10, num_subsets=4, seed=0)  # same arguments: nothing to do
    assert manifest.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=r"seed=0 \(now 1\).*--overwrite"):
        create_subsets(tmp_path, num_train=10, num_subsets=4, seed=1)
    new = create_subsets(tmp_path, num_train=10, num_subsets=2, seed=1, overwrite=True)
    assert all(np.array_equal(a, b) for a, b in zip(read_subsets(tmp_path), new))
    assert len(read_subsets(tmp_path)) == 2 and not subset_indices_path(tmp_path, 3).exists()
    with pytest.raises(ConfigError, match="--overwrite"):
        write_subsets(tmp_path, new, num_train=10, fraction=0.5, seed=1, train_indices=list(range(5, 15)))


def test_more_subsets_extend_a_root_and_keep_its_trained_models(tmp_path):
    create_subsets(tmp_path, num_train=12, num_subsets=3, seed=2, train_indices=list(range(20, 32)))
    before = {i: subset_indices_path(tmp_path, i).read_bytes() for i in range(3)}
    job = plan_retraining(tmp_path, num_seeds=2, protocol="independent", base_seed=5)[1]
    mark_job_done(job)
    grown = create_subsets(tmp_path, num_train=12, num_subsets=5, seed=2, train_indices=list(range(20, 32)))
    assert len(read_subsets(tmp_path)) == 5
    assert all(np.array_equal(a, b) for a, b in zip(read_subsets(tmp_path), grown))
    assert {i: subset_indices_path(tmp_path, i).read_bytes() for i in range(3)} == before
    regrown = plan_retraining(tmp_path, num_seeds=2, protocol="independent", base_seed=5, skip_done=False)
    assert job in regrown and job_done(job)  # same subset file, same seed: still trained
    with pytest.raises(ConfigError, match="--overwrite"):  # fewer subsets is not an extension
        create_subsets(tmp_path, num_train=12, num_subsets=4, seed=2, train_indices=list(range(20, 32)))
    subset_indices_path(tmp_path, 0).write_text("20\n21\n")  # a written subset that differs: refused
    with pytest.raises(DataError, match="SHA-256"):
        create_subsets(tmp_path, num_train=12, num_subsets=6, seed=2, train_indices=list(range(20, 32)))


def test_benchmark_grows_its_subsets_and_refuses_other_settings(tmp_path):
    from lit_attr.evaluation.campaign import Benchmark

    def bench(**subsets):
        return Benchmark(BenchmarkConfig(root=str(tmp_path), subsets=SubsetsConfig(**subsets),
                                         retraining=RetrainingConfig(recipe=str(ROOT / "configs/lds/tiny_train.yaml"))))

    bench(num_subsets=2, seed=4).write_subsets()
    first = read_subsets(tmp_path)
    bench(num_subsets=4, seed=4).write_subsets()  # a larger M adds subsets 2 and 3
    grown = read_subsets(tmp_path)
    assert len(grown) == 4 and all(np.array_equal(a, b) for a, b in zip(first, grown))
    with pytest.raises(ConfigError, match="a larger --subsets.num_subsets alone adds subsets"):
        bench(num_subsets=4, seed=5).write_subsets()
    with pytest.raises(ConfigError, match="num_subsets"):
        bench(num_subsets=3, seed=4).write_subsets()


def test_training_seed_protocols():
    independent = {training_seed("independent", 10, i, k, 3) for i in range(4) for k in range(3)}
    assert independent == set(range(10, 22))
    assert training_seed(SeedingProtocol.INDEPENDENT, 10, 2, 1, 3) == 10 + 2 * 3 + 1
    assert {training_seed("common", 10, i, 1, 3) for i in range(4)} == {11}
    with pytest.raises(ConfigError, match="choose one of independent, common"):
        training_seed("shared", 0, 0, 0, 1)
    with pytest.raises(ConfigError, match="slot < num_seeds"):
        training_seed("common", 0, 0, 3, 3)


def test_plan_shards_cover_every_job_once_and_skip_done(tmp_path):
    create_subsets(tmp_path, num_train=8, num_subsets=5, seed=0)
    full = plan_retraining(tmp_path, num_seeds=2, protocol="independent", base_seed=7)
    assert [(j.subset_index, j.slot) for j in full[:6]] == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (0, 1)]
    shards = [JobShare(start=s, count=3).select(full) for s in range(0, 10, 3)]
    assert [j for shard in shards for j in shard] == full and len(full) == 10
    workers = [JobShare(start=2, count=5, worker=w, num_workers=2).select(full) for w in range(2)]
    assert workers == [full[2:7:2], full[3:7:2]]
    job = full[6]
    assert job.run_dir == tmp_path / "retrain" / "subset_001" / "seed_1" and job.seed == 7 + 1 * 2 + 1
    assert job.indices_file == subset_indices_path(tmp_path, 1)
    assert not job_done(job)
    mark_job_done(job, {"steps": 3})
    assert job_done(job)
    assert job not in plan_retraining(tmp_path, 2, "independent", 7)
    assert JobShare(start=6, count=3).select(plan_retraining(tmp_path, 2, "independent", 7, skip_done=False))[0] == job
    with pytest.raises(StoreMismatchError, match="seed 10; this plan uses seed 8"):
        plan_retraining(tmp_path, 2, "common", 7)
    create_subsets(tmp_path, num_train=8, num_subsets=5, seed=1, overwrite=True)
    with pytest.raises(StoreMismatchError, match="another version of"):
        plan_retraining(tmp_path, 2, "independent", 7)


def test_lds_plan_gives_extra_seeds_to_the_first_subsets_only(tmp_path):
    create_subsets(tmp_path, num_train=8, num_subsets=4, fraction=0.5, seed=0)
    config = BenchmarkConfig(root=str(tmp_path), subsets=SubsetsConfig(num_subsets=4, fraction=0.5),
                             retraining=RetrainingConfig(full_steps=10, base_seed=7, num_seeds=2, extra_seed_subsets=1))
    jobs = lds_jobs(config, BenchmarkLayout(tmp_path), num_train=8)
    assert [(j.job.subset_index, j.job.slot) for j in jobs] == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]
    planned = plan_retraining(tmp_path, 2, "common", 7)
    assert [j.job for j in jobs] == [j for j in planned if j.slot == 0 or j.subset_index < 1]
    assert {j.steps for j in jobs} == {5} and jobs[-1].label == "subset 000 seed 1"


def test_removal_plan_order_folders_and_index_files(tmp_path):
    train_indices = [100 + j for j in range(10)]
    scores = {"kfac": np.arange(20.0).reshape(10, 2), "pixel": -np.arange(20.0).reshape(10, 2) + 10}
    removal = RemovalConfig(queries=[1], fractions=[0.2, 0.3], methods=["pixel", "kfac"], control_seed=4)
    methods = [MethodConfig(name="kfac"), MethodConfig(name="pixel", kind="pixel")]
    config = BenchmarkConfig(root=str(tmp_path), methods=methods,
                             retraining=RetrainingConfig(full_steps=20, base_seed=3),
                             queries=QueriesConfig(num_generated=2), removal=removal)
    called = []
    jobs = removal_jobs(config, BenchmarkLayout(tmp_path), train_indices,
                        lambda method: called.append(method.name) or scores[method.name])
    assert called == ["pixel", "kfac"]
    assert [j.label for j in jobs] == [f"removal {m} {n}" for m in ("pixel", "kfac")
                                       for n in ("q001_top_0.2", "random_0.2", "q001_top_0.3", "random_0.3")]
    assert [(j.job.subset_index, j.job.slot, j.job.seed) for j in jobs[:4]] == [(1, 0, 3), (-1, 0, 3), (1, 1, 3),
                                                                                  (-1, 1, 3)]
    first = jobs[0].job
    assert first.run_dir == tmp_path / "removal" / "pixel" / "q001_top_0.2" / "run"
    assert first.indices_file == first.run_dir.parent / "indices.txt"
    removed = top_influence_removal(torch.from_numpy(scores["pixel"]), 0.2, 1)
    kept = remaining_positions(10, removed).tolist()
    assert read_index_file(first.indices_file) == [100 + p for p in kept]
    assert jobs[0].steps == scale_steps(20, 10, len(kept))
    control = remaining_positions(10, random_removal(10, 0.3, seed=4 + 1)).tolist()
    assert read_index_file(jobs[3].job.indices_file) == [100 + p for p in control]
    assert removal_jobs(BenchmarkConfig(root=str(tmp_path)), BenchmarkLayout(tmp_path), train_indices, None) == []
    again = removal_jobs(config, BenchmarkLayout(tmp_path), train_indices, lambda method: scores[method.name])
    assert [j.job for j in again] == [j.job for j in jobs]  # the same picks: planned again without complaint
    changed = {**scores, "kfac": -scores["kfac"]}  # e.g. another damping chosen after more seeds were trained
    with pytest.raises(StoreMismatchError, match="holds other training indices than this plan picks now.*delete"):
        removal_jobs(config, BenchmarkLayout(tmp_path), train_indices, lambda method: changed[method.name])


def test_scale_steps_keeps_epochs():
    assert scale_steps(32000, 5000, 2500) == 16000  # CIFAR-2, App. G.7
    assert scale_steps(160000, 50000, 25000) == 80000  # CIFAR-10
    assert scale_steps(10, 1000, 1) == 1
    with pytest.raises(ConfigError, match="positive"):
        scale_steps(0, 10, 5)


def test_top_influence_removal_picks_largest_positive_scores():
    scores = torch.tensor([[0.5, -1.0], [3.0, -2.0], [-4.0, 0.1], [2.0, -0.5], [3.0, -3.0],
                           [0.0, -1.0], [1.0, -1.0], [-1.0, -1.0], [0.2, -1.0], [0.1, -1.0]])
    assert top_influence_removal(scores, 0.3, query=0).tolist() == [1, 4, 3]  # tie 3.0: lower position first
    assert top_influence_removal(scores, 0.3, query=1).tolist() == [2]  # only one positive score
    assert top_influence_removal(scores, 0.3, query=1, positive_only=False).tolist() == [2, 3, 0]
    assert remaining_positions(10, torch.tensor([1, 4, 3])).tolist() == [0, 2, 5, 6, 7, 8, 9]
    control = random_removal(10, 0.3, seed=5)
    assert len(control) == 3 and len(set(control.tolist())) == 3
    assert torch.equal(control, random_removal(10, 0.3, seed=5))
    with pytest.raises(ConfigError, match="0 < fraction < 1"):
        top_influence_removal(scores, 0.0, query=0)


def test_retraining_metric_mean_and_stderr_by_hand():
    metric = RetrainingWithoutTopInfluences()
    metric.update(torch.tensor([2.0, -4.0]), torch.tensor([3.0, -3.0]), torch.tensor([2.0, -4.0]))
    metric.update(torch.tensor([1.0]), torch.tensor([0.5]))
    result = metric.compute()
    changes = [0.5, 0.25, -0.5]  # (3 - 2) / 2, (-3 + 4) / 4, (0.5 - 1) / 1
    mean = sum(changes) / 3
    stderr = math.sqrt(sum((c - mean) ** 2 for c in changes) / 2) / math.sqrt(3)
    assert result["mean"].item() == pytest.approx(mean) and result["stderr"].item() == pytest.approx(stderr)
    assert result["control_mean"].item() == 0.0 and result["control_stderr"].item() == 0.0
    assert result["control_relative_change"][2].isnan()
    torch.testing.assert_close(result["relative_change"], torch.tensor(changes))


def test_run_jobs_skips_a_job_another_process_finished_meanwhile(tmp_path, monkeypatch, capsys):
    """A sequential run checks each job's marker again before training it: a parallel ``evaluate.py retrain``
    share that finished the job in the meantime is not duplicated."""
    from lit_attr.evaluation import runner
    from lit_attr.evaluation.jobs import RetrainJob, TrainingJob

    indices = tmp_path / "indices.txt"
    indices.write_text("0\n1\n")
    jobs = [TrainingJob(RetrainJob(i, 0, 5, indices, tmp_path / f"subset_{i}"), steps=10, label=f"subset {i}")
            for i in range(3)]
    trained = []

    def fake_run_job(bench, job):
        trained.append(job.label)
        job.job.run_dir.mkdir(parents=True)
        mark_job_done(job.job, {"steps": job.steps})
        if job is jobs[0]:  # meanwhile another process finishes subset 1
            jobs[1].job.run_dir.mkdir(parents=True)
            mark_job_done(jobs[1].job, {"steps": 10})
        return 1.0

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    runner.run_jobs(bench=None, jobs=jobs, workers=1)
    assert trained == ["subset 0", "subset 2"]
    assert "subset 1: done meanwhile by another process; skipped" in capsys.readouterr().out
    assert all(job_done(j.job) for j in jobs)
