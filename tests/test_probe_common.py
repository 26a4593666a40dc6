"""benchmarks/probe_common.py: the shared-effect ceiling of the targets and the common / query-specific split of scores."""

from __future__ import annotations

import numpy as np
import torch

from tests.helpers import load_benchmark_script


def _probe_common():
    return load_benchmark_script("probe_common")


def test_shared_effect_ceiling_separates_a_shared_subset_effect_from_query_specific_targets():
    probe = _probe_common()
    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    specific = torch.randn(40, 16, generator=generator, dtype=torch.float64)
    assert probe.shared_effect_ceiling(shared + 0.01 * specific).mean() > 0.99
    assert abs(float(probe.shared_effect_ceiling(specific).mean())) < 0.1


def test_score_split_is_a_common_column_plus_a_part_with_zero_mean_over_queries():
    probe = _probe_common()
    rng = np.random.default_rng(0)
    per_example = rng.normal(size=(50, 1))
    scores = 3.0 * per_example + rng.normal(size=(50, 8)) * np.arange(1, 9)  # query columns on different scales
    common, specific = probe.split_scores(scores)
    assert common.shape == specific.shape == scores.shape
    np.testing.assert_allclose(common, common[:, :1].repeat(8, axis=1))
    np.testing.assert_allclose(specific.mean(axis=1), 0.0, atol=1e-12)
    z = (scores - scores.mean(axis=0)) / scores.std(axis=0)
    np.testing.assert_allclose(common + specific, z)
    assert np.corrcoef(common[:, 0], per_example[:, 0])[0, 1] > 0.5
