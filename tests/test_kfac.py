"""K-FAC factors against the exact GGN, against curvlinops, and their accumulation and storage."""

from __future__ import annotations

import pytest
import torch
from curvlinops import KFACLinearOperator
from torch import nn

from lit_attr.curvature import (
    FisherType,
    KFACAccumulator,
    KFACApprox,
    factors_exist,
    factors_path,
    fit_kfac_factors,
    kfac_matrix,
    load_factors,
    num_kfac_parameters,
    save_factors,
    select_kfac_modules,
)
from lit_attr.curvature.accumulators import iterate_ddpm_batches
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import UnsupportedLayerError
from tests.cases import (  # noqa: F401
    CONV_CASE,
    DEEP_LINEAR_CASE,
    MLP_CASE,
    UNET_CASE,
    ddpm_batches,
    our_factors,
    single_thread,
    tiny_unet,
)
from tests.reference import assert_close_report, exact_ggn_blocks


class _Flat(nn.Module):
    """curvlinops wrapper: the output flattened to (R, D) (see the ``kfac`` module docstring)."""

    def __init__(self, net: nn.Module, call) -> None:
        super().__init__()
        self.net, self.call = net, call

    def forward(self, x):
        return self.call(self.net, x).flatten(1)


def curvlinops_factors(model, modules, forward, rows, targets, fisher, approx):
    num_rows = targets.shape[0]
    params = [p for m in modules.values() for p in m.parameters(recurse=False)]
    op = KFACLinearOperator(
        _Flat(model, forward), nn.MSELoss(reduction="mean"), params, [(rows, targets.flatten(1))],
        check_deterministic=False, fisher_type=fisher, kfac_approx=approx, num_per_example_loss_terms=1,
        separate_weight_and_bias=False, num_data=num_rows,
        batch_size_fn=(lambda x: x["xt"].shape[0]) if isinstance(rows, dict) else None,
    )
    op.compute_kronecker_factors()
    state = op.state_dict()
    return {n: (state["input_covariances"][f"net.{n}"], state["gradient_covariances"][f"net.{n}"]) for n in modules}


def test_select_modules_of_unet():
    model = tiny_unet()
    modules = select_kfac_modules(model)
    assert all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in modules.values())
    for projection in ("to_q", "to_k", "to_v", "to_out.0"):
        assert f"mid_block.attentions.0.{projection}" in modules
    assert not any("norm" in name for name in modules)
    norm_params = sum(p.numel() for m in model.modules() if isinstance(m, nn.GroupNorm) for p in m.parameters())
    assert num_kfac_parameters(modules) + norm_params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "layer, match",
    [(nn.Conv2d(4, 4, 3, groups=2), "groups=2"), (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "reflect"),
     (nn.ConvTranspose2d(2, 2, 3), "ConvTranspose2d"), (nn.MultiheadAttention(4, 2), "MultiheadAttention|out_proj")],
)
def test_unsupported_layers_raise_typed_error(layer, match):
    model = nn.Sequential(nn.Linear(2, 2), layer)
    with pytest.raises(UnsupportedLayerError, match=match) as info:
        select_kfac_modules(model)
    assert "'1" in str(info.value)  # names the layer


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_type2_equals_exact_ggn_for_deep_linear_network(approx):
    model, modules, rows, factors = our_factors(DEEP_LINEAR_CASE, num_rows=5, approx=approx)
    exact = exact_ggn_blocks(model, modules, lambda m: m(rows))
    for name in modules:
        assert_close_report(kfac_matrix(factors, name), exact[name], rtol=1e-10, atol=1e-12, name=name)


def test_type2_equals_exact_ggn_for_one_datum():
    model, modules, rows, factors = our_factors(MLP_CASE, num_rows=1)
    exact = exact_ggn_blocks(model, modules, lambda m: m(rows))
    for name in modules:
        assert_close_report(kfac_matrix(factors, name), exact[name], rtol=1e-10, atol=1e-12, name=name)


@pytest.mark.parametrize("fisher", ["type-2", "empirical", "mc"])
def test_expand_equals_reduce_without_weight_sharing(fisher):
    targets = MLP_CASE["rows"](4, seed=7)[:, :3]
    _, modules, _, expand = our_factors(MLP_CASE, 4, fisher, "expand", targets=targets)
    _, _, _, reduce = our_factors(MLP_CASE, 4, fisher, "reduce", targets=targets)
    for name in modules:
        for e, r in zip(expand.factors[name], reduce.factors[name]):
            assert_close_report(r, e, rtol=1e-12, atol=1e-14, name=name)


def test_mc_fisher_approaches_type2():
    *_, exact = our_factors(MLP_CASE, num_rows=3, fisher="type-2")
    *_, mc = our_factors(MLP_CASE, num_rows=3, fisher="mc", mc_samples=3000)
    for name, (a, g) in exact.factors.items():
        a_mc, g_mc = mc.factors[name]
        assert_close_report(a_mc, a, rtol=1e-12, atol=1e-14, name=f"{name} A")
        assert_close_report(g_mc, g, rtol=0.1, atol=1.5e-2 * g.abs().max().item(), name=f"{name} G")


@pytest.mark.parametrize("case", [CONV_CASE, UNET_CASE], ids=["conv", "unet"])
@pytest.mark.parametrize("fisher", ["type-2", "empirical"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_matches_curvlinops(case, fisher, approx):
    num_rows = 3 if case is CONV_CASE else 2
    model = case["model"]()
    with torch.no_grad():
        targets = torch.randn_like(case["forward"](model, case["rows"](num_rows)))
    model, modules, rows, ours = our_factors(case, num_rows, fisher, approx, targets=targets)
    theirs = curvlinops_factors(model, modules, case["forward"], rows, targets, fisher, approx)
    g_scale = targets[0].numel() if fisher == "empirical" else 1.0  # curvlinops' empirical G is D times ours
    # Absolute tolerances on the scale of the whole model: some blocks are pure rounding noise
    # (reduce G of attention keys: softmax is invariant to a shift of all keys, so sum_p g = 0).
    a_tol, g_tol = (1e-12 * max(f[i].abs().max().item() for f in theirs.values()) for i in (0, 1))
    for name, (a, g) in ours.factors.items():
        a_ref, g_ref = theirs[name]
        assert_close_report(a, a_ref, rtol=1e-9, atol=a_tol, name=f"{name} A")
        assert_close_report(g * g_scale, g_ref, rtol=1e-9, atol=g_tol, name=f"{name} G")


def test_batches_and_ranks_add_up_exactly():
    """One batch == two batches == two 'ranks' whose raw sums are added (all_reduce)."""
    model = CONV_CASE["model"]()
    modules = select_kfac_modules(model)
    rows = CONV_CASE["rows"](8)  # 4 examples x 2 draws
    forward = lambda r: (lambda: model(r))  # noqa: E731

    def make():
        return KFACAccumulator(modules, "mc", "expand", mc_samples=2, seed=5, model=model)

    single, first, second = make(), make(), make()
    single.update(forward(rows), torch.arange(4))
    first.update(forward(rows[:4]), torch.arange(2))
    second.update(forward(rows[4:]), torch.arange(2, 4))
    for key, value in first.state_tensors().items():
        value += second.state_tensors()[key]  # what all_reduce(SUM) does
    expected, merged = single.finalize(), first.finalize()
    assert merged.num_rows == expected.num_rows == 8
    for name in modules:
        for got, want in zip(merged.factors[name], expected.factors[name]):
            assert_close_report(got, want, rtol=1e-10, atol=1e-13, name=name)


def test_fit_factors_ddpm_inference_mode_and_storage(tmp_path):
    """fit_kfac_factors == the accumulator inside torch.inference_mode (Lightning eval loops); save/load."""
    unet = tiny_unet()
    modules = select_kfac_modules(unet)
    schedule = DiffusionSchedule(1000)
    eps = lambda xt, t: unet(xt, t).sample  # noqa: E731
    fitted = fit_kfac_factors(eps, schedule, modules, ddpm_batches(), num_draws=2, seed=1, fisher_type="mc", model=unet)
    accumulator = KFACAccumulator(modules, "mc", "expand", seed=1, model=unet)
    with torch.inference_mode():
        iterate_ddpm_batches(accumulator, eps, schedule, ddpm_batches(), num_draws=2, seed=1)
    again = accumulator.finalize()
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())
    path = factors_path(tmp_path)
    assert not factors_exist(path)
    save_factors(path, fitted, {"damping": 1e-8, "dataset": "digits"})
    loaded = load_factors(path)
    assert factors_exist(path) and loaded.metadata == {"damping": 1e-8, "dataset": "digits"}
    assert (loaded.num_rows, loaded.fisher_type, loaded.kfac_approx) == (8, FisherType.MC, KFACApprox.EXPAND)
    for name in modules:
        for got, want, other in zip(loaded.factors[name], fitted.factors[name], again.factors[name]):
            assert torch.equal(got, want)
            assert_close_report(other, want, rtol=1e-10, atol=1e-14, name=name)
            assert_close_report(want, want.T, rtol=1e-10, atol=1e-14, name=f"{name} symmetric")


def test_string_choices_are_enums():
    assert FisherType("type-2") is FisherType.TYPE2 and KFACApprox("reduce") is KFACApprox.REDUCE
    assert FisherType.MC == "mc"
