"""Per-example gradients of the K-FAC'd layers, many examples per forward+backward (paper eq. 6).

An example's quantity (its loss, or a measurement) is a Monte Carlo average over S draws
(App. G.3). All B S rows go through ONE forward and ONE backward pass; hooks capture each layer's
input ``a`` and output gradient ``g`` (``lit_attr.curvature.capture``), and the gradient matrix of
example b is the contraction over its draws s and the layer's positions p:

    grad_b = sum_{s, p} g_{(b,s),p} a_{(b,s),p}^T      (bias column: sum_{s,p} g)

computed by ``lit_attr.curvature.capture.grouped_gradients``: a batched matmul over the
(B, S P, .) views for Linear layers, and for Conv2d the weight gradient of a grouped convolution
with one group per example (the framework's im2col-free kernel; no unfolded patches are stored).
Because each row's gradient ``dl_row / dz_row`` only depends on its own row (no batch coupling:
GroupNorm is per sample), this equals the one-example-at-a-time gradient. Parameters outside the
K-FAC'd layers (norms) are held fixed and get no gradient. Memory: the captured layer inputs of
all R rows (as autograd keeps anyway) plus the (B, out, in+1) results; split large batches of
examples into several calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lit_attr.curvature.capture import LayerCapture, grad_enabled, grouped_gradients
from lit_attr.diffusion.loss import EpsModel, expand_draws, expand_labels, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule


def per_example_gradients(
    model: nn.Module | None, modules: dict[str, nn.Module], row_loss_fn: Callable[[], Tensor], num_examples: int,
    rows_per_example: int,
) -> dict[str, Tensor]:
    """Gradients of per-example quantities that are sums over their rows.

    Args:
        model: owner of ``modules`` (its parameter gradients are switched off during the pass),
            or None for the layers' own parameters.
        modules: K-FAC'd layers by name.
        row_loss_fn: runs the forward over R = ``num_examples * rows_per_example`` rows
            (example-major) and returns per-row contributions (R,); example b's quantity is the sum
            of rows ``b S ... b S + S - 1`` (e.g. ``loss_row / S``).
        num_examples: B.
        rows_per_example: S.

    Returns:
        name -> (B, out, in+1) gradient matrices (``[dW | db]`` layout).
    """
    with grad_enabled(), LayerCapture(modules, model, param_grads=False) as capture:
        contributions = row_loss_fn()
        capture.check_all_ran()
        expected = (num_examples * rows_per_example,)
        if tuple(contributions.shape) != expected:
            raise ValueError(f"row_loss_fn returned shape {tuple(contributions.shape)}, expected {expected}.")
        grad_outputs = capture.backward(contributions, torch.ones_like(contributions))
        return {
            name: grouped_gradients(module, capture.inputs[name], grad_outputs[name], rows_per_example)
            for name, module in modules.items()
        }


def per_example_loss_gradients(
    eps_model: EpsModel, schedule: DiffusionSchedule, modules: dict[str, nn.Module], x0: Tensor, timesteps: Tensor,
    noise: Tensor, model: nn.Module | None = None, labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """Gradients of the per-example DDPM loss averaged over its S draws (eq. 2 with App. G.3).

    Args:
        eps_model: ``eps_model(x_t, t) -> eps_hat``.
        schedule: the forward process.
        modules: K-FAC'd layers by name.
        x0: images (B, C, H, W); timesteps: (B, S); noise: (B, S, C, H, W).
        model: owner of ``modules``.
        labels: (B,) class labels of a class-conditional model, or None.

    Returns:
        name -> (B, out, in+1).
    """
    num_examples, num_draws = timesteps.shape

    def row_loss_fn() -> Tensor:
        rows = expand_draws(x0.clone(), timesteps.to(x0.device).clone(), noise.to(x0).clone())
        return loss_per_draw(eps_model, schedule, *rows, expand_labels(labels, num_draws)) / num_draws

    return per_example_gradients(model, modules, row_loss_fn, num_examples, num_draws)


def flatten_gradients(grads: dict[str, Tensor]) -> Tensor:
    """Concatenate per-layer (B, out, in+1) matrices (dict order, row-major) into (B, num_params)."""
    return torch.cat([g.flatten(1) for g in grads.values()], dim=1)


def unflatten_gradients(flat: Tensor, shapes: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """Inverse of ``flatten_gradients``; ``shapes`` from ``lit_attr.curvature.layers.gradient_shapes``."""
    sizes = [out * cols for out, cols in shapes.values()]
    if sum(sizes) != flat.shape[1]:
        raise ValueError(f"flat has {flat.shape[1]} columns but the shapes need {sum(sizes)}.")
    parts = torch.split(flat, sizes, dim=1)
    return {name: part.reshape(flat.shape[0], *shape) for (name, shape), part in zip(shapes.items(), parts)}
