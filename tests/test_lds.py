"""LDS (eq. 13): against scipy's Spearman, a hand-computed case with ties, the sign, NaN seeds, DDP sync."""

from __future__ import annotations

import math
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_attr.errors import DataError
from lit_attr.metrics import (
    LinearDatamodelingScore,
    exact_retraining_lds,
    predicted_changes,
    seed_reliability,
    spearman_per_query,
    split_half_reliability,
    subset_bootstrap,
    subset_resamples,
    subsets_to_masks,
)


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_benchmark(num_train: int = 12, num_subsets: int = 9, num_seeds: int = 3, num_queries: int = 5,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores (N, Q), masks (M, N) with half of the examples kept, measurements (M, K, Q)."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_train, num_queries, generator=gen, dtype=torch.float64)
    masks = torch.stack([torch.randperm(num_train, generator=gen) < num_train // 2 for _ in range(num_subsets)])
    measurements = torch.randn(num_subsets, num_seeds, num_queries, generator=gen, dtype=torch.float64)
    return scores, masks, measurements


def scipy_column(x: torch.Tensor, y: torch.Tensor) -> float:
    """``scipy.stats.spearmanr`` of two vectors (imported here: the DDP workers import this module)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x.numpy(), y.numpy()).statistic)


def test_spearman_matches_scipy_with_and_without_ties():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(11, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (11, 4), generator=gen).double()  # many ties
    x[:, 3] = torch.randint(0, 3, (11,), generator=gen).double()  # ties on both sides
    expected = torch.tensor([scipy_column(x[:, q], y[:, q]) for q in range(4)], dtype=torch.float64)
    torch.testing.assert_close(spearman_per_query(x, y), expected, rtol=1e-12, atol=1e-12)


def test_lds_matches_scipy_by_hand():
    scores, masks, measurements = random_benchmark()
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    result = metric.compute()
    removed_sums = (~masks).double() @ scores  # sum over the examples left out of each subset
    targets = measurements.mean(dim=1)
    expected = torch.tensor([scipy_column(removed_sums[:, q], targets[:, q]) for q in range(scores.shape[1])])
    torch.testing.assert_close(result["lds_per_query"].double(), expected.double(), rtol=1e-6, atol=1e-6)
    values = expected.numpy()
    assert result["mean"].item() == pytest.approx(values.mean(), abs=1e-6)
    assert result["stderr"].item() == pytest.approx(values.std(ddof=1) / math.sqrt(len(values)), abs=1e-6)
    assert result["num_queries"].item() == scores.shape[1]


def test_hand_computed_case_with_ties():
    # N = 3 examples with scores [1, 2, 3] for both queries; subset i drops example 2 - i, so the
    # predicted changes are [3, 2, 1] / 3. Query 0: targets [3, 2, 1] -> rho = 1. Query 1: targets
    # [2, 2, 1] -> ranks [3, 2, 1] vs [2.5, 2.5, 1]; centred [1, 0, -1] . [.5, .5, -1] = 1.5 over
    # sqrt(2 * 1.5) -> rho = sqrt(3) / 2 = 0.8660254.
    scores = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    masks = torch.tensor([[True, True, False], [True, False, True], [False, True, True]])
    seeds_q0 = torch.tensor([[2.0, 4.0], [1.0, 3.0], [0.0, 2.0]])  # means 3, 2, 1
    seeds_q1 = torch.tensor([[2.0, 2.0], [1.0, 3.0], [1.0, 1.0]])  # means 2, 2, 1
    measurements = torch.stack([seeds_q0, seeds_q1], dim=-1)  # (3 subsets, 2 seeds, 2 queries)
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    result = metric.compute()
    torch.testing.assert_close(result["lds_per_query"], torch.tensor([1.0, 0.8660254]))
    assert result["mean"].item() == pytest.approx((1 + math.sqrt(3) / 2) / 2, abs=1e-6)


def test_sign_removed_scores_predict_the_change():
    # If retraining on D_i changes the measurement by exactly +sum of the removed examples' scores,
    # the LDS is 1; the wrong sign (summing the kept examples' scores) would give -1.
    scores, masks, _ = random_benchmark(num_train=20, num_subsets=15, num_queries=3, seed=2)
    change = (~masks).double() @ scores / 20
    measurements = (5.0 + change).unsqueeze(1)  # (M, 1, Q)
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    torch.testing.assert_close(metric.compute()["lds_per_query"], torch.ones(3))
    kept_sums = masks.double() @ scores
    torch.testing.assert_close(spearman_per_query(kept_sums, change), -torch.ones(3, dtype=torch.float64))


def test_nan_seeds_average_available_ones_and_empty_subsets_are_dropped():
    scores, masks, measurements = random_benchmark(seed=3)
    measurements[0, 1:, :] = float("nan")  # subset 0: only seed 0
    measurements[4, :, 2] = float("nan")  # subset 4 has no model for query 2
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    lds = metric.compute()["lds_per_query"].double()
    removed_sums = (~masks).double() @ scores
    for q in range(scores.shape[1]):
        rows = [i for i in range(masks.shape[0]) if not (q == 2 and i == 4)]
        targets = torch.stack([measurements[i, :, q][measurements[i, :, q].isfinite()].mean() for i in rows])
        assert lds[q].item() == pytest.approx(scipy_column(removed_sums[rows, q], targets), abs=1e-6)


def test_constant_targets_give_nan_and_are_left_out_of_the_mean():
    scores, masks, measurements = random_benchmark(num_queries=3, seed=4)
    measurements[:, :, 1] = 7.0
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    result = metric.compute()
    assert result["lds_per_query"][1].isnan() and result["num_queries"].item() == 2
    finite = result["lds_per_query"][[0, 2]].double()
    assert result["mean"].item() == pytest.approx(finite.mean().item(), abs=1e-6)


def test_query_index_orders_blocks_and_shapes_are_checked():
    scores, masks, measurements = random_benchmark(seed=5)
    whole = LinearDatamodelingScore()
    whole.update(scores, masks, measurements)
    blocks = LinearDatamodelingScore()
    blocks.update(scores[:, 3:], masks, measurements[:, :, 3:], query_index=torch.tensor([3, 4]))
    blocks.update(scores[:, :3], masks, measurements[:, :, :3], query_index=torch.tensor([0, 1, 2]))
    torch.testing.assert_close(blocks.compute()["lds_per_query"], whole.compute()["lds_per_query"])
    with pytest.raises(DataError, match="num_subsets, num_queries"):
        blocks.update(scores, masks, measurements[:-1])


def test_subsets_to_masks_and_predictions():
    masks = subsets_to_masks([np.array([0, 2]), np.array([1])], num_train=3)
    assert masks.tolist() == [[True, False, True], [False, True, False]]
    scores = torch.tensor([[1.0], [2.0], [4.0]])
    assert predicted_changes(scores, masks).flatten().tolist() == pytest.approx([2 / 3, 5 / 3])


def test_noise_diagnostics_match_scipy():
    scores_a, masks, measurements = random_benchmark(num_seeds=4, seed=6)
    noise = torch.randn(scores_a.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    scores_b = scores_a + 0.5 * noise  # an independent, noisier estimate of the same scores
    measurements[2, 0, 1] = float("nan")  # seed 0 missing for subset 2, query 1
    oracle = exact_retraining_lds(measurements)
    reliability = seed_reliability(measurements, 0, 1)
    split = split_half_reliability(scores_a, scores_b, masks)
    others = measurements[:, 1:].mean(dim=1)
    for q in range(scores_a.shape[1]):
        rows = [i for i in range(masks.shape[0]) if not (q == 1 and i == 2)]
        assert oracle[q].item() == pytest.approx(scipy_column(measurements[rows, 0, q], others[rows, q]), abs=1e-10)
        assert reliability[q].item() == pytest.approx(
            scipy_column(measurements[rows, 0, q], measurements[rows, 1, q]), abs=1e-10)
        pred_a, pred_b = ((~masks).double() @ s for s in (scores_a, scores_b))
        assert split[q].item() == pytest.approx(scipy_column(pred_a[:, q], pred_b[:, q]), abs=1e-10)
    with pytest.raises(DataError, match="num_seeds >= 2"):
        exact_retraining_lds(measurements[:, :1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*called before the ``update``")  # the rank without data
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    scores, masks, measurements = random_benchmark(seed=8)
    uneven = LinearDatamodelingScore()  # rank 0 holds queries 3, 4; rank 1 holds 0, 1, 2 in two updates
    empty = LinearDatamodelingScore()  # rank 1 gets no query at all
    blocks = [[3, 4]] if rank == 0 else [[0, 1], [2]]
    for block in blocks:
        uneven.update(scores[:, block], masks, measurements[:, :, block], query_index=torch.tensor(block))
    if rank == 0:
        empty.update(scores, masks, measurements)
    results = {"uneven": uneven.compute(), "empty": empty.compute()}
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_sync_equals_single_process(tmp_path):
    scores, masks, measurements = random_benchmark(seed=8)
    single = LinearDatamodelingScore()
    single.update(scores, masks, measurements)
    expected = single.compute()
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in ("uneven", "empty"):
            for key in ("lds_per_query", "mean", "stderr", "num_queries"):
                torch.testing.assert_close(results[name][key], expected[key], msg=f"rank {rank} {name} {key}")


def test_draw_set_spread_is_zero_for_equal_draw_sets_and_grows_with_noise():
    from lit_attr.evaluation.results import draw_set_spread

    g = torch.Generator().manual_seed(0)
    num_train, num_subsets, num_queries = 40, 12, 5
    masks = torch.rand(num_subsets, num_train, generator=g) < 0.5
    signal = torch.randn(num_train, num_queries, generator=g, dtype=torch.float64)
    targets = predicted_changes(signal, masks) + 1e-3 * torch.randn(num_subsets, num_queries, generator=g,
                                                                      dtype=torch.float64)
    same = draw_set_spread([signal.numpy()] * 3, masks, targets)
    assert same.sd == 0.0 and len(same.lds) == 3 and same.lds[0] > 0.9
    noisy = [(signal + 3 * torch.randn(num_train, num_queries, generator=g, dtype=torch.float64)).numpy()
             for _ in range(4)]
    spread = draw_set_spread(noisy, masks, targets)
    assert spread.sd > 0.02 and max(spread.lds) < same.lds[0]


def test_subset_bootstrap_of_the_identity_resample_is_the_lds_and_resamples_are_seeded():
    scores, masks, measurements = random_benchmark(num_subsets=9)
    metric = LinearDatamodelingScore()
    metric.update(scores, masks, measurements)
    identity = torch.arange(9)[None].repeat(2, 1)
    values = subset_bootstrap(scores, masks, measurements, identity)
    torch.testing.assert_close(values, metric.compute()["mean"].double().repeat(2))
    assert torch.equal(subset_resamples(9, 50, seed=3), subset_resamples(9, 50, seed=3))
    assert not torch.equal(subset_resamples(9, 50, seed=3), subset_resamples(9, 50, seed=4))
    with pytest.raises(DataError, match=">= 2 subsets"):
        subset_resamples(1)


def test_subset_bootstrap_sees_a_subset_effect_shared_by_every_query():
    """Targets = one subset-level factor common to all queries (+ a little per-query noise), scores that track
    it only partly: every query's LDS moves together with the draw of the subsets, so the s.e. over queries is
    far below the bootstrap-over-subsets s.e.; with independent per-query targets the two agree in size."""
    gen = torch.Generator().manual_seed(0)
    num_train, num_subsets, num_queries = 40, 12, 30
    masks = torch.stack([torch.randperm(num_train, generator=gen) < num_train // 2 for _ in range(num_subsets)])
    weights = torch.randn(num_train, generator=gen, dtype=torch.float64)
    scores = weights[:, None] + 0.5 * torch.randn(num_train, num_queries, generator=gen, dtype=torch.float64)
    removed = (~masks).double()
    shared = removed @ weights  # (M,): the same subset effect for every query
    resamples = subset_resamples(num_subsets, 300)

    def spread(targets):
        metric = LinearDatamodelingScore()
        metric.update(scores, masks, targets)
        return float(metric.compute()["stderr"]), float(subset_bootstrap(scores, masks, targets, resamples).std())

    common = shared[:, None] + 0.05 * torch.randn(num_subsets, num_queries, generator=gen, dtype=torch.float64)
    query_se, subset_se = spread(common)
    assert subset_se > 3 * query_se
    independent = removed @ torch.randn(num_train, num_queries, generator=gen, dtype=torch.float64)
    query_se, subset_se = spread(independent)
    assert subset_se < 2 * query_se
