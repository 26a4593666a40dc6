"""Checkpoints at chosen steps of one run (``SaveAtStepsCallback``) and the checkpoint ensemble's plan."""

import pytest
import torch

from callbacks.checkpoint_steps import SaveAtStepsCallback, step_checkpoint
from lit_attr.errors import ConfigError
from lit_attr.evaluation import training
from lit_attr.evaluation.campaign import max_weight_difference
from lit_attr.evaluation.config import BenchmarkConfig, MethodConfig, RetrainingConfig
from lit_attr.evaluation.jobs import mark_job_done
from lit_attr.evaluation.layout import BenchmarkLayout
from lit_attr.evaluation.plans import full_job, trajectory_job
from tests.helpers import ROOT

TINY_RECIPE = ROOT / "configs" / "lds" / "tiny_train.yaml"


def test_checkpoints_hold_the_weights_after_their_step_and_a_rerun_with_the_seed_reproduces_the_run(tmp_path):
    run = training.train_model(TINY_RECIPE, tmp_path / "a", max_steps=4, seed=0, save_steps=[3, 2])
    again = training.train_model(TINY_RECIPE, tmp_path / "b", max_steps=4, seed=0)
    saved = {n: torch.load(step_checkpoint(tmp_path / "a", n), weights_only=True) for n in (2, 3)}
    assert {n: c["global_step"] for n, c in saved.items()} == {2: 2, 3: 3}
    final = torch.load(run.checkpoint, weights_only=True)
    assert final["global_step"] == 4
    assert max_weight_difference(step_checkpoint(tmp_path / "a", 2), step_checkpoint(tmp_path / "a", 3)) > 0
    assert max_weight_difference(step_checkpoint(tmp_path / "a", 3), run.checkpoint) > 0
    assert max_weight_difference(run.checkpoint, again.checkpoint) == 0  # the members lie on the full model's run
    assert not (tmp_path / "b" / "step_3").exists()


def test_bad_steps_are_refused_with_the_fix(tmp_path):
    for steps in ([], [0], [2, 2]):
        with pytest.raises(ValueError, match="distinct positive optimiser steps"):
            SaveAtStepsCallback(steps)
    with pytest.raises(ValueError, match="step 9 is beyond trainer.max_steps=4"):
        training.train_model(TINY_RECIPE, tmp_path / "late", max_steps=4, seed=0, save_steps=[9])
    with pytest.raises(ConfigError, match="ensemble_steps is supported for kinds kfac, trak and dtrak only"):
        MethodConfig(name="pixel", kind="pixel", ensemble_steps=[1])
    with pytest.raises(ConfigError, match="must be distinct positive optimiser steps"):
        MethodConfig(ensemble_steps=[5, 5])
    with pytest.raises(ConfigError, match="ensemble_steps must be below retraining.full_steps=600.*got 600"):
        BenchmarkConfig(methods=[MethodConfig(ensemble_steps=[300, 600])])


def test_one_rerun_saves_every_method_s_steps_and_a_rerun_missing_steps_is_refused(tmp_path):
    methods = [MethodConfig(name="late", ensemble_steps=[500, 400]), MethodConfig(name="mid", ensemble_steps=[300]),
               MethodConfig(name="plain")]
    config = BenchmarkConfig(root=str(tmp_path), retraining=RetrainingConfig(full_steps=600), methods=methods)
    layout = BenchmarkLayout(tmp_path)
    job = trajectory_job(config, layout, [0, 1, 2])
    full = full_job(config, layout, [0, 1, 2])
    assert job.save_steps == (300, 400, 500) and job.steps == full.steps == 600
    assert job.job.seed == full.job.seed and job.job.indices_file == full.job.indices_file
    assert job.job.run_dir == tmp_path / "ensemble" / "trajectory"
    assert methods[0].ensemble_members == ["step_500", "step_400"]
    mark_job_done(job.job, {"steps": 600, "save_steps": [300, 400]})  # a rerun made for an earlier config
    with pytest.raises(ConfigError, match=r"saved checkpoints at steps \[300, 400\]; this config asks for "
                                          r"\[300, 400, 500\]. Delete .*trajectory to rerun it"):
        trajectory_job(config, layout, [0, 1, 2])
    mark_job_done(job.job, {"steps": 600, "save_steps": [300, 400, 500, 550]})
    assert trajectory_job(config, layout, [0, 1, 2]).save_steps == (300, 400, 500)


class FakeTrainer:
    """The part of ``L.Trainer`` that ``SaveAtStepsCallback`` reads; ``written`` lists the steps saved."""

    def __init__(self, root, max_steps=None):
        self.global_step, self.is_global_zero, self.default_root_dir = 0, True, str(root)
        self.max_steps, self.written = max_steps, []

    def save_checkpoint(self, path, weights_only):
        self.written.append(self.global_step)
        torch.save({}, path)


def test_a_step_is_saved_once_when_several_batches_end_at_it(tmp_path):
    """With gradient accumulation ``global_step`` stays put for several batches; the checkpoint is written once."""
    trainer, callback = FakeTrainer(tmp_path), SaveAtStepsCallback([1, 2])
    for step in (0, 1, 1, 1, 2, 2, 3):  # accumulation over up to three batches
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.written == [1, 2]
    assert step_checkpoint(tmp_path, 1).exists() and step_checkpoint(tmp_path, 2).exists()


def test_fractions_resolve_to_steps_of_max_steps_and_are_saved(tmp_path):
    """``fractions`` name the steps as parts of ``trainer.max_steps`` (rounded, at least 1, each saved once)."""
    trainer = FakeTrainer(tmp_path, max_steps=1500)
    callback = SaveAtStepsCallback(fractions=[0.8, 0.4, 0.6])
    callback.on_fit_start(trainer, None)
    assert callback.steps == [600, 900, 1200]
    for step in range(1, 1501):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.written == [600, 900, 1200] and step_checkpoint(tmp_path, 900).exists()
    trainer.max_steps = 4  # a short run: 0.4 and 0.6 of 4 steps both round to 2
    callback = SaveAtStepsCallback(fractions=[0.4, 0.6, 0.8, 0.01])
    callback.on_fit_start(trainer, None)
    assert callback.steps == [1, 2, 3]


def test_bad_fractions_are_refused_with_the_fix():
    for fractions in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            SaveAtStepsCallback(fractions=fractions)
    with pytest.raises(ValueError, match="either steps .* or fractions"):
        SaveAtStepsCallback()
    with pytest.raises(ValueError, match="either steps .* or fractions"):
        SaveAtStepsCallback([1], fractions=[0.5])
    with pytest.raises(ValueError, match="fractions need a finite trainer.max_steps"):
        SaveAtStepsCallback(fractions=[0.5]).on_fit_start(FakeTrainer(".", max_steps=-1), None)
