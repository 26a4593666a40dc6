"""Eigendecomposition, damped inverse and EK-FAC against dense computations."""

from __future__ import annotations

import pytest
import torch

from lit_attr.curvature import (
    eigendecompose_factors,
    fit_eigenvalue_correction,
    fit_kfac_factors,
    kfac_matrix,
    precondition,
    select_kfac_modules,
)
from lit_attr.curvature.eigen import EigenvalueCorrectionAccumulator
from lit_attr.curvature.layers import gradient_matrix_shape
from lit_attr.diffusion.schedule import DiffusionSchedule
from tests.cases import CONV_CASE, MLP_CASE, ddpm_batches, our_factors, single_thread, tiny_unet  # noqa: F401
from tests.reference import assert_close_report, damped_solve, exact_ggn_blocks


def corrected_eigen(model, modules, rows, eigen, fisher="type-2"):
    accumulator = EigenvalueCorrectionAccumulator(modules, eigen, fisher, model=model, chunk_rows=2)
    accumulator.update(lambda: model(rows), torch.arange(rows.shape[0]))
    return accumulator.finalize()


@pytest.mark.parametrize("corrected", [False, True], ids=["kfac", "ekfac"])
def test_precondition_equals_dense_damped_solve(corrected):
    model, modules, rows, factors = our_factors(CONV_CASE, num_rows=4)
    eigen = eigendecompose_factors(factors, dtype=torch.float64)
    if corrected:
        eigen = corrected_eigen(model, modules, rows, eigen)
    gen = torch.Generator().manual_seed(0)
    shapes = {name: gradient_matrix_shape(module) for name, module in modules.items()}
    grads = {name: torch.randn(3, *shape, generator=gen, dtype=torch.float64) for name, shape in shapes.items()}
    damping = 1e-3
    result = precondition(grads, eigen, damping)
    for name, v in grads.items():
        source = eigen if corrected else factors
        expected = damped_solve(kfac_matrix(source, name), damping, v.flatten(1).T).T.reshape(v.shape)
        assert_close_report(result[name], expected, rtol=1e-8, atol=1e-10 * expected.abs().max().item(), name=name)


def test_eigendecomposition_reproduces_factors():
    _, modules, _, factors = our_factors(CONV_CASE, num_rows=4)
    eigen = eigendecompose_factors(factors, dtype=torch.float64)
    for name in modules:
        dense = kfac_matrix(factors, name)
        atol = 1e-12 * dense.abs().max().item()
        assert_close_report(kfac_matrix(eigen, name), dense, rtol=1e-9, atol=atol, name=name)
    assert eigendecompose_factors(factors).layers[name].QA.dtype == torch.float32


@pytest.mark.parametrize("case", [MLP_CASE, CONV_CASE], ids=["mlp", "conv"])
def test_ekfac_closer_to_exact_ggn_than_kfac(case):
    model, modules, rows, factors = our_factors(case, num_rows=6)
    exact = exact_ggn_blocks(model, modules, lambda m: m(rows))
    eigen = eigendecompose_factors(factors, dtype=torch.float64)
    ekfac = corrected_eigen(model, modules, rows, eigen)
    improved = 0
    for name in modules:
        err_kfac = torch.linalg.norm(kfac_matrix(eigen, name) - exact[name])
        err_ekfac = torch.linalg.norm(kfac_matrix(ekfac, name) - exact[name])
        slack = 1e-10 * torch.linalg.norm(exact[name])  # layers where K-FAC is exact (the last one) are noise
        assert err_ekfac <= err_kfac + slack, f"{name}: EK-FAC error {err_ekfac:.3g} > K-FAC error {err_kfac:.3g}"
        improved += bool(err_ekfac < 0.99 * err_kfac)
    assert improved >= 1


def test_ekfac_equals_kfac_for_one_datum():
    model, modules, rows, factors = our_factors(MLP_CASE, num_rows=1)
    eigen = eigendecompose_factors(factors, dtype=torch.float64)
    ekfac = corrected_eigen(model, modules, rows, eigen)
    for name, layer in ekfac.layers.items():
        expected = eigen.layers[name].eigenvalues()
        assert_close_report(layer.corrected, expected, rtol=1e-8, atol=1e-12 * expected.abs().max().item(), name=name)


def test_fit_eigenvalue_correction_on_unet():
    unet = tiny_unet()
    modules = select_kfac_modules(unet)
    schedule = DiffusionSchedule(1000)
    eps = lambda xt, t: unet(xt, t).sample  # noqa: E731
    factors = fit_kfac_factors(eps, schedule, modules, ddpm_batches(), num_draws=2, model=unet)
    basis = eigendecompose_factors(factors)
    eigen = fit_eigenvalue_correction(eps, schedule, modules, basis, ddpm_batches(), num_draws=2, model=unet)
    for name, module in modules.items():
        corrected = eigen.layers[name].corrected
        assert corrected.shape == gradient_matrix_shape(module) and (corrected >= 0).all()
    assert eigen.layers["mid_block.attentions.0.to_q"].corrected.sum() > 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_factors_name_the_layer_and_factor(bad):
    """NaN curvature once surfaced as "LinAlgError: linalg.eigh failed to converge" with no layer or cause."""
    from lit_attr.errors import NumericalError

    _, modules, _, factors = our_factors(MLP_CASE, 6)
    name = list(factors.factors)[1]
    factors.factors[name][1][0, 0] = bad
    with pytest.raises(NumericalError, match=rf"in the G \(output-gradient\) factor of layer {name}"):
        eigendecompose_factors(factors)
