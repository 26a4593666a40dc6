"""``--continuation.*``: its settings (flags, a config block, refusals) and the continued training itself
(reproducible from its seed, each kept step the prefix of a longer run, the model restored, the loss lowered).
The end-to-end runs through ``attribute.py`` are in ``tests/test_attribute_methods.py``."""

from __future__ import annotations

import pytest
import torch

from lit_attr.attribution.continuation import (
    ContinuationSettings,
    continue_training,
    requested_continuation,
    without_continuation_flags,
)
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import loss_per_example, unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.pipeline_io import load_ddpm_module
from tests.helpers import tiny_attribution_run

NUM_TRAIN = 64


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    root = tiny_attribution_run(tmp_path_factory.mktemp("continuation"), NUM_TRAIN)
    data = AttributionDataModule(dataset="digits", subset_file=str(root / "run" / "subset.txt"))
    data.setup("predict")
    return load_ddpm_module(root / "run" / "checkpoints" / "last.ckpt"), data.dataset


def test_settings_come_from_flags_over_a_config_block(tmp_path):
    config = tmp_path / "attribute.yaml"
    config.write_text("continuation:\n  steps: [300, 100]\n  seed: 5\n  lr: 0.001\n")
    settings = requested_continuation(["--config", str(config), "--continuation.lr=3e-3"])
    assert settings == ContinuationSettings(steps=(100, 300), lr=3e-3, seed=5)
    assert requested_continuation(["--continuation.steps", "[2]"]).steps == (2,)
    assert requested_continuation(["--method", "kfac"]) is None
    args = ["--continuation.steps", "[2, 4]", "--method", "kfac", "--continuation.lr=1e-3", "--data.batch_size=8"]
    assert without_continuation_flags(args) == ["--method", "kfac", "--data.batch_size=8"]


@pytest.mark.parametrize(("args", "message"), [
    (["--continuation.steps", "[0, 2]"], "distinct positive step counts"),
    (["--continuation.steps", "[2, 2]"], "distinct positive step counts"),
    (["--continuation.steps", "5"], "distinct positive step counts"),
    (["--continuation.steps", "[2]", "--continuation.lr", "-1"], "positive learning rate"),
    (["--continuation.steps", "[2]", "--continuation.batch_size", "0"], "batch_size must be an integer >= 1"),
    (["--continuation.lr", "1e-3"], "needs --continuation.steps"),
    (["--continuation.stepz", "[2]"], "Unknown flag --continuation.stepz"),
])
def test_bad_settings_are_refused_with_the_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        requested_continuation(args)


def _training_loss(ddpm, dataset) -> float:
    """Mean loss over ``dataset`` on fixed draws (8 per example)."""
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    index = torch.arange(len(dataset))
    t, noise = draw_for_batch(index, 8, tuple(images.shape[1:]), ddpm.schedule.num_timesteps, 123, "train",
                              DrawScheme.INDEPENDENT)
    with torch.no_grad():
        return float(loss_per_example(unet_eps_model(ddpm.attribution_unet), ddpm.schedule, images, t, noise).mean())


def test_continued_training_is_seeded_prefix_consistent_restores_the_model_and_lowers_the_loss(model_and_data):
    ddpm, dataset = model_and_data
    start = {k: v.clone() for k, v in ddpm.attribution_unet.state_dict().items()}
    before = _training_loss(ddpm, dataset)
    kwargs = {"lr": 3e-3, "batch_size": 16, "warmup_steps": 2}
    two, eight = continue_training(ddpm, dataset, [2, 8], seed=0, **kwargs)
    for name, value in ddpm.attribution_unet.state_dict().items():
        assert torch.equal(value, start[name]), name  # the model as saved is back
    (again,) = continue_training(ddpm, dataset, [2], seed=0, **kwargs)
    (other,) = continue_training(ddpm, dataset, [2], seed=1, **kwargs)
    assert all(torch.equal(again[k], two[k]) for k in two)  # the seed fixes every draw; step 2 is a prefix of 8
    assert any(not torch.equal(other[k], two[k]) for k in two)
    assert any(not torch.equal(eight[k], start[k]) for k in start)
    (longer,) = continue_training(ddpm, dataset, [60], seed=0, **kwargs)
    ddpm.attribution_unet.load_state_dict(longer)
    try:
        assert _training_loss(ddpm, dataset) < before  # the tiny model is far from converged: training helps
    finally:
        ddpm.attribution_unet.load_state_dict(start)
