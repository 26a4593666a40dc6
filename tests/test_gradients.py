"""Per-example gradients (one forward+backward over all rows) against a one-example-at-a-time loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_attr.attribution.gradients import (
    flatten_gradients,
    per_example_gradients,
    per_example_loss_gradients,
    unflatten_gradients,
)
from lit_attr.curvature import layer_gradient_matrix, select_kfac_modules
from lit_attr.curvature.capture import LayerCapture
from lit_attr.curvature.layers import gradient_shapes, split_gradient_matrix
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import loss_per_example
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError, UnsupportedLayerError
from tests.cases import CONV_CASE, single_thread, tiny_unet  # noqa: F401
from tests.reference import assert_close_report, loop_per_example_gradients


@pytest.mark.parametrize("num_examples, num_draws", [(3, 3), (1, 1), (1, 4), (2, 1)])
def test_per_example_loss_gradients_equal_loop_on_unet(num_examples, num_draws):
    """Includes a batch of one example (a ragged last batch, a single query), which once crashed."""
    unet = tiny_unet()
    modules = select_kfac_modules(unet)
    schedule = DiffusionSchedule(1000)
    eps = lambda xt, t: unet(xt, t).sample  # noqa: E731
    x0 = torch.randn(num_examples, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    timesteps, noise = draw_for_batch(torch.arange(num_examples), num_draws, (1, 8, 8), 1000, seed=0, stream="train")
    noise = noise.double()
    grads = per_example_loss_gradients(eps, schedule, modules, x0, timesteps, noise, model=unet)
    assert all(p.requires_grad and p.grad is None for p in unet.parameters())
    sl = lambda b: slice(b, b + 1)  # noqa: E731
    expected = loop_per_example_gradients(
        modules, lambda b: loss_per_example(eps, schedule, x0[sl(b)], timesteps[sl(b)], noise[sl(b)]).sum(),
        num_examples,
    )
    assert any("to_k" in name for name in grads)
    for name, g in expected.items():
        assert_close_report(grads[name], g, rtol=1e-8, atol=1e-11 * g.abs().max().item(), name=name)


def test_per_example_gradients_of_weighted_rows_on_conv_net():
    """Generic row contributions on a net with strided conv, conv without bias, and a token Linear."""
    model = CONV_CASE["model"]()
    modules = select_kfac_modules(model)
    rows = CONV_CASE["rows"](8)  # 4 examples x 2 rows
    weights = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)

    def row_loss_fn():
        return weights * model(rows).pow(3).flatten(1).mean(1)

    grads = per_example_gradients(model, modules, row_loss_fn, num_examples=4, rows_per_example=2)

    def example_loss(b):
        sl = slice(2 * b, 2 * b + 2)
        return (weights[sl] * model(rows[sl]).pow(3).flatten(1).mean(1)).sum()

    for name, g in loop_per_example_gradients(modules, example_loss, 4).items():
        assert_close_report(grads[name], g, rtol=1e-9, atol=1e-13, name=name)


def test_flatten_and_gradient_matrix_round_trips():
    model = CONV_CASE["model"]()
    modules = select_kfac_modules(model)
    model(CONV_CASE["rows"](2)).sum().backward()
    grads = {name: layer_gradient_matrix(m).unsqueeze(0).repeat(3, 1, 1) for name, m in modules.items()}
    flat = flatten_gradients(grads)
    assert flat.shape == (3, sum(p.numel() for p in model.parameters()))
    back = unflatten_gradients(flat, gradient_shapes(modules))
    for name, module in modules.items():
        assert torch.equal(back[name], grads[name])
        weight, bias = split_gradient_matrix(module, back[name][0])
        assert torch.equal(weight, module.weight.grad)
        assert bias is None if module.bias is None else torch.equal(bias, module.bias.grad)


def test_capture_with_external_backward_and_flags():
    model = CONV_CASE["model"]()
    modules = select_kfac_modules(model)
    rows = CONV_CASE["rows"](3)
    with LayerCapture(modules, model, param_grads=False) as capture:
        out = model(rows)
        assert not any(p.requires_grad for p in model.parameters())
        out.backward(torch.ones_like(out))  # the caller's own backward fills grad_outputs via tensor hooks
        external = dict(capture.grad_outputs)
        capture.clear()
        out = model(rows)
        ours = capture.backward(out, torch.ones_like(out))
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert set(external) == set(modules)
    for name in modules:
        assert torch.equal(external[name], ours[name])
    model(rows)  # hooks are gone: no error, nothing recorded
    assert capture.inputs.keys() == modules.keys()


def test_shared_layer_raises():
    layer = nn.Linear(2, 2)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    with pytest.raises(UnsupportedLayerError, match="ran twice"):
        with LayerCapture(select_kfac_modules(model)):
            model(torch.randn(1, 2))


def test_layer_that_never_runs_is_named():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    modules = select_kfac_modules(model)
    with pytest.raises(ConfigError, match=r"\['1'\] did not run"):
        per_example_gradients(model, modules, lambda: model[0](torch.randn(2, 2)).sum(1), 2, 1)
