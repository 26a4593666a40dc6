"""The convolution kernels behind K-FAC's A and the per-example gradients, against unfolded patches.

Every form (per-pixel, grouped and FFT Gram; grouped-conv and unfolded per-group gradients) is checked on
a grid of geometries (kernel, stride, padding, dilation, image size, bias), including the border
cases the shortcuts rely on, and the layer-wise scores against the flat-gradient scores.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lit_attr.attribution.gradients import (
    flatten_gradients,
    per_example_loss_gradients,
    per_example_loss_scores,
)
from lit_attr.attribution.quantize import compress, score_against, with_float_copy
from lit_attr.curvature import num_kfac_parameters, select_kfac_modules
from lit_attr.curvature import conv_grads
from lit_attr.curvature.capture import grouped_gradients
from lit_attr.curvature.conv_grads import grouped_conv_gradients, unfolded_group_chunks, unfolded_group_gradients
from lit_attr.curvature.conv_gram import ConvPlan, conv_patch_gram, conv_plan_for
from lit_attr.curvature.spectral import lag_sums
from lit_attr.diffusion.schedule import DiffusionSchedule
from tests.cases import tiny_unet
from tests.reference import expanded_inputs

GEOMETRIES = [
    (k, s, p, d, size)
    for k, s, p, d, size in itertools.product((1, 2, 3), (1, 2), (0, 1, 2), (1, 2), (3, 5, 8))
    if (k - 1) * d + 1 <= size + 2 * p
]


def _conv_rows(kernel, stride, padding, dilation, size, rows=6, bias=True):
    torch.manual_seed(0)
    module = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    x = torch.randn(rows, 3, size, size, dtype=torch.float64)
    g = torch.randn_like(module(x))
    return module, x, g


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}n{}".format(*g))
def test_patch_gram_forms_equal_unfolded(geometry):
    module, x, _ = _conv_rows(*geometry)
    patches = expanded_inputs(module, x, append_ones=False)
    expected = torch.einsum("rpi,rpj->ij", patches, patches)
    for form in ("per_pixel", "grouped", "spectral"):
        torch.testing.assert_close(conv_patch_gram(module, x, form=form), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dilation", [1, 2])
def test_full_range_and_spectral_forms_on_large_maps(dilation):
    """On a 12 x 12 map with stride 1 most pixels are interior: the full-range and FFT forms run."""
    module, x, _ = _conv_rows(3, 1, dilation, dilation, 12)
    plan = conv_plan_for(module, x)
    assert isinstance(plan, ConvPlan) and plan.spectral and any(d.from_full for d in plan.displacements)
    assert not _conv_plan(3, 2, 1, 12).spectral  # strided: direct form
    patches = expanded_inputs(module, x, append_ones=False)
    expected = torch.einsum("rpi,rpj->ij", patches, patches)
    for form in ("grouped", "spectral"):
        torch.testing.assert_close(conv_patch_gram(module, x, form=form), expected, rtol=1e-12, atol=1e-12)
    single = conv_patch_gram(module.float(), x.float(), form="spectral")  # float32 FFT rounding
    torch.testing.assert_close(single.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_spectral_lag_sums_equal_direct_sums():
    x = torch.randn(3, 4, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lags = [(0, 0), (0, 1), (1, -2), (2, 2), (3, -1)]
    for (dy, dx), got in zip(lags, lag_sums(x, lags)):
        want = sum(x[:, :, y, c].T @ x[:, :, y + dy, c + dx] for y in range(7) for c in range(6)
                   if 0 <= y + dy < 7 and 0 <= c + dx < 6)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _conv_plan(kernel, stride, padding, size):
    module, x, _ = _conv_rows(kernel, stride, padding, 1, size, rows=1)
    return conv_plan_for(module, x)


@pytest.mark.parametrize("geometry", GEOMETRIES[::3], ids=lambda g: "k{}s{}p{}d{}n{}".format(*g))
@pytest.mark.parametrize("group_size", [1, 3])
def test_group_gradient_kernels_equal_unfolded(geometry, group_size):
    module, x, g = _conv_rows(*geometry)
    patches = expanded_inputs(module, x, append_ones=False)
    grads = g.flatten(2).transpose(1, 2)
    groups = x.shape[0] // group_size
    expected = torch.einsum(
        "bspo,bspi->boi", grads.reshape(groups, group_size, *grads.shape[1:]),
        patches.reshape(groups, group_size, *patches.shape[1:]),
    )
    for kernel in (grouped_conv_gradients, unfolded_group_gradients):
        torch.testing.assert_close(kernel(module, x, g, group_size), expected, rtol=1e-12, atol=1e-12)
    for elements in (1, 2**30):  # one group per chunk (the CPU's cache-sized chunks, taken to the limit); one chunk
        chunks = list(unfolded_group_chunks(module, x, g, group_size, elements))
        assert len(chunks) == (groups if elements == 1 else 1)
        blocks = torch.cat([block for _, _, block in chunks]).transpose(2, 3).reshape(expected.shape)
        torch.testing.assert_close(blocks, expected, rtol=1e-12, atol=1e-12)


def test_grouped_gradients_bias_column_and_batch_of_one():
    module, x, g = _conv_rows(3, 1, 1, 1, 4, rows=2)
    whole = grouped_gradients(module, x, g, 2)
    assert whole.shape == (1, 4, 3 * 9 + 1)
    torch.testing.assert_close(whole[0, :, -1], g.sum(dim=(0, 2, 3)))


def _scoring_case(num_queries: int, mode: str):
    """A tiny U-Net's layer-wise loss scores and flat gradients of 3 examples x 2 draws, and ``num_queries``
    compressed query rows: ``(scores_of(queries), flat_gradients, queries)``."""
    model = tiny_unet()
    modules = select_kfac_modules(model)
    schedule = DiffusionSchedule(1000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    timesteps = torch.randint(0, 1000, (3, 2), generator=gen)
    noise = torch.randn(3, 2, 1, 8, 8, generator=gen, dtype=torch.float64)
    queries = compress(torch.randn(num_queries, num_kfac_parameters(modules), generator=gen, dtype=torch.float64),
                       mode)

    def eps(xt, t):
        return model(xt, t).sample

    def scores_of(rows):
        return per_example_loss_scores(eps, schedule, modules, x0, timesteps, noise, rows, model)

    flat = flatten_gradients(per_example_loss_gradients(eps, schedule, modules, x0, timesteps, noise, model))
    return scores_of, flat, queries


@pytest.mark.parametrize("mode", ["none", "int8"])
@pytest.mark.parametrize("max_positions", [0, 10**9], ids=["grouped-conv", "unfolded"])
def test_layerwise_scores_equal_flat_scores(mode, max_positions, monkeypatch):
    """Both convolution kernels (weight and bias parts contracted separately) give the flat gradients' scores."""
    monkeypatch.setattr(conv_grads, "IM2COL_MAX_POSITIONS", max_positions)
    scores_of, flat, queries = _scoring_case(4, mode)
    layerwise = scores_of(queries)
    expected = score_against(queries, flat)
    torch.testing.assert_close(layerwise, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())


@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_float_copy_of_the_query_store_leaves_the_scores_unchanged(mode):
    """``with_float_copy`` (attribute.py's ``float_query_cache_mib``) only skips the per-batch conversion."""
    scores_of, flat, queries = _scoring_case(5, mode)
    copied = with_float_copy(queries, max_bytes=queries.shape[0] * queries.shape[1] * 4)
    assert queries.float_values is None and torch.equal(copied.float_values, queries.values.float())
    assert with_float_copy(queries, max_bytes=queries.shape[0] * queries.shape[1] * 4 - 1).float_values is None
    torch.testing.assert_close(scores_of(copied), scores_of(queries), rtol=0, atol=0)
    torch.testing.assert_close(score_against(copied, flat), score_against(queries, flat), rtol=0, atol=0)
