"""Query compression: exact round-trip bounds and score rankings against float32."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from lit_attr.attribution.memory import QUERY_BYTES
from lit_attr.attribution.quantize import QueryCompression, compress, decompress, score_against, with_float_copy


def gradient_like(rows: int, dim: int, seed: int) -> torch.Tensor:
    """Student-t (5 degrees of freedom) entries with row scales over 4 decades, like per-example gradients."""
    gen = torch.Generator().manual_seed(seed)
    chi2 = torch.randn(rows, dim, 5, generator=gen).square().sum(-1)
    base = torch.randn(rows, dim, generator=gen) / (chi2 / 5).sqrt()
    return base * torch.logspace(-3, 1, rows)[torch.randperm(rows, generator=gen)][:, None]


def test_int8_round_trip_bounds():
    x = gradient_like(6, 1000, seed=0)
    x[2] = 0.0
    compressed = compress(x)
    assert compressed.values.dtype == torch.int8 and compressed.mode is QueryCompression.INT8
    scales = x.abs().amax(dim=1) / 127
    torch.testing.assert_close(compressed.scales[[0, 1, 3, 4, 5]], scales[[0, 1, 3, 4, 5]])
    error = (decompress(compressed) - x).abs()
    assert (error <= compressed.scales[:, None] / 2 * (1 + 1e-5)).all()
    assert (decompress(compressed)[2] == 0).all()
    assert compressed.values.abs().amax(dim=1)[[0, 1, 3, 4, 5]].eq(127).all()  # the absmax maps to +-127


@pytest.mark.parametrize("mode", ["fp16", "none"])
def test_other_modes_round_trip(mode):
    x = gradient_like(4, 100, seed=1)
    out = decompress(compress(x, mode))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x, rtol=1e-3 if mode == "fp16" else 0, atol=0 if mode == "none" else 1e-7)


@pytest.mark.parametrize("mode", list(QueryCompression))
def test_scores_equal_decompressed_matmul(mode):
    queries, train = gradient_like(5, 300, seed=2), gradient_like(7, 300, seed=3)
    compressed = compress(queries, mode)
    expected = train @ decompress(compressed).T
    torch.testing.assert_close(score_against(compressed, train, chunk_size=64), expected, rtol=1e-5, atol=1e-6)


def test_int8_scores_rank_like_float32():
    queries, train = gradient_like(8, 20000, seed=4), gradient_like(300, 20000, seed=5)
    train = train + 0.5 * queries[torch.arange(300) % 8] * torch.rand(300, 1)  # some real signal
    exact = train @ queries.T
    approx = score_against(compress(queries, "int8"), train)
    for q in range(queries.shape[0]):
        rho = spearmanr(approx[:, q].numpy(), exact[:, q].numpy()).statistic
        assert rho >= 0.99, f"query {q}: Spearman {rho:.4f}"


@pytest.mark.parametrize("mode", ["int8", "fp16", "none"])
def test_non_finite_rows_are_refused_not_mapped_to_zero(mode):
    """int8 rounding once turned NaN into 0 (a run of all-zero scores that looked complete)."""
    from lit_attr.errors import NumericalError

    x = gradient_like(4, 50, seed=1)
    x[2, 7] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(NumericalError, match=r"rows \[2, 3\] hold NaN/Inf"):
        compress(x, mode)


def test_compressing_blocks_of_rows_equals_compressing_all():
    from lit_attr.attribution.quantize import concat_compressed

    x = gradient_like(7, 300, seed=2)
    whole = compress(x)
    blocks = concat_compressed([compress(x[:3]), compress(x[3:6]), compress(x[6:])])
    assert torch.equal(blocks.values, whole.values) and torch.equal(blocks.scales, whole.scales)


@pytest.mark.parametrize("mode, budget, expected", [
    ("int8", 4_000_000, 1_000_000 + 4_000_000),  # the float32 copy fits: counted
    ("int8", 3_999_999, 1_000_000),  # it does not: the store alone
    ("fp16", 4_000_000, 2_000_000 + 4_000_000),
    ("none", 10**9, 4_000_000),  # already float32: no copy
])
def test_memory_estimate_counts_the_float_copy_of_the_queries(mode, budget, expected):
    from lit_attr.attribution.memory import RunShape, estimate_memory

    shape = RunShape(num_params=1000, activation_bytes_per_row=0, curvature_entries=0, num_queries=1000,
                     query_batch_size=1, measurement_draws=1, batch_size=1, num_draws=1, curvature_draws=0,
                     query_compression=mode, float_query_cache_bytes=budget)
    assert estimate_memory(shape).queries == expected
    copied = with_float_copy(compress(torch.ones(1000, 1000), mode), budget)
    assert (copied.float_values is not None) == (expected > 1000 * 1000 * QUERY_BYTES[mode])
