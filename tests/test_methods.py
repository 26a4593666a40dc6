"""Attribution methods as objects: the registry, stored settings, and a scoring pass against a direct computation."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch

from lit_attr.errors import ConfigError, StoreMismatchError
from lit_attr.evaluation.config import MethodConfig, QueriesConfig
from lit_attr.methods.base import ScoringInputs
from lit_attr.methods.registry import METHODS, method_for
from lit_attr.methods.trak import DTRAK, TRAK


def test_registry_names_every_kind_a_config_accepts():
    assert set(METHODS) == set(typing.get_args(typing.get_type_hints(MethodConfig)["kind"]))
    assert all(cls.kind == kind for kind, cls in METHODS.items())
    assert isinstance(method_for(MethodConfig(kind="dtrak")), DTRAK)
    with pytest.raises(ConfigError, match="kind='bogus' is not supported; choose one of kfac, trak"):
        method_for(MethodConfig(name="x", kind="bogus"))


def test_trak_and_dtrak_store_their_query_functions():
    config = MethodConfig(kind="trak", measurements=["loss", "elbo"])
    assert TRAK(config).wanted_settings()["measurements"] == ["loss", "elbo"]
    assert DTRAK(config).wanted_settings()["measurements"] == ["sqnorm"]
    assert DTRAK(config).wanted_settings()["method"] == "dtrak"


def test_pixel_cosine_scores_resume_and_refuse_other_settings(tmp_path, capsys):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(5, 1, 4, 4, generator=generator) * 2 - 1
    queries = images[[3, 0]]
    dataset = [{"index": i, "image": images[i]} for i in range(5)]
    inputs = ScoringInputs(checkpoint=tmp_path / "unused.ckpt", output_dir=tmp_path, curvature_dir=tmp_path,
                           data={}, queries=QueriesConfig(), dataset=dataset, query_images=lambda: queries)
    method = method_for(MethodConfig(name="pixel", kind="pixel"))
    method.score(inputs)
    (score_set,) = method.score_sets(tmp_path)
    expected = (images.flatten(1) / images.flatten(1).norm(dim=1, keepdim=True)).double()
    expected = expected @ expected[[3, 0]].T  # (N, Q)
    np.testing.assert_allclose(score_set.scores[:, 0, 0, :], expected.numpy(), rtol=1e-6)
    assert score_set.scores.shape == (5, 1, 1, 2) and score_set.scores[3, 0, 0].argmax() == 0
    method.score(inputs)
    assert "pixel: already scored." in capsys.readouterr().out
    clip = method_for(MethodConfig(name="pixel", kind="clip", clip_weights="clip.pt"))
    with pytest.raises(StoreMismatchError, match="made with other settings"):
        clip.score(inputs)
