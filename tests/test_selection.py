"""Damping chosen without the evaluation subsets (two-fold cross-fitting)."""

from types import SimpleNamespace

import pytest
import torch

from lit_attr.evaluation.selection import cross_fitted, fold_masks


def test_folds_split_the_subsets_in_two():
    even, odd = fold_masks(5)
    assert even.tolist() == [True, False, True, False, True] and (even ^ odd).all()


def test_each_fold_picks_its_damping_and_is_scored_on_the_other_fold():
    # fold 0 prefers damping 1.0 (mean 0.5 vs 0.2), fold 1 prefers 0.1 (0.6 vs 0.1)
    rows = [SimpleNamespace(damping=0.1, folds=[[0.2, 0.2], [0.6, 0.6]]),
            SimpleNamespace(damping=1.0, folds=[[0.5, 0.5], [0.1, 0.3]])]
    result = cross_fitted(rows)
    assert result.dampings == [1.0, 0.1]
    # query LDS = mean of (damping 1.0 on fold 1) and (damping 0.1 on fold 0)
    assert result.per_query == pytest.approx([(0.1 + 0.2) / 2, (0.3 + 0.2) / 2])
    assert result.mean == pytest.approx(0.2)
    assert result.stderr == pytest.approx(torch.tensor([0.15, 0.25]).std().item() / 2**0.5)


def test_a_single_damping_is_the_mean_of_its_two_held_out_halves():
    result = cross_fitted([SimpleNamespace(damping=1e-8, folds=[[0.1, float("nan")], [0.3, 0.5]])])
    assert result.dampings == [1e-8, 1e-8]
    assert result.per_query[0] == pytest.approx(0.2)
