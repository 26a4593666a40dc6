"""Per-example gradients of the K-FAC'd layers, many examples per forward+backward (paper eq. 6).

An example's quantity (its loss, or a measurement) is a Monte Carlo average over S draws
(App. G.3). All B S rows go through ONE forward and ONE backward pass; hooks capture each layer's
input ``a`` and output gradient ``g`` (``lit_attr.curvature.capture``), and the gradient matrix of
example b is the contraction over its draws s and the layer's positions p:

    grad_b = sum_{s, p} g_{(b,s),p} a_{(b,s),p}^T      (bias column: sum_{s,p} g)

computed by ``lit_attr.curvature.capture.grouped_gradients``: a batched matmul over the
(B, S P, .) views for Linear layers, and for Conv2d the weight gradient of a grouped convolution
with one group per example, or on small maps unfolded patches of a few examples at a time and a
batched matmul (``lit_attr.curvature.conv_grads``).
Because each row's gradient ``dl_row / dz_row`` only depends on its own row (no batch coupling:
GroupNorm is per sample), this equals the one-example-at-a-time gradient. Parameters outside the
K-FAC'd layers (norms) are held fixed and get no gradient. Memory: the captured layer inputs of
all R rows (as autograd keeps anyway) plus the (B, out, in+1) results; split large batches of
examples into several calls. Scoring (``per_example_scores``) contracts each layer's gradients
with the queries' columns of that layer right away, so at most one layer's (B, out, in+1) block
exists at a time (a 35.7M-parameter U-Net's flat per-example gradients take 143 MB each).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lit_attr.attribution.quantize import CompressedRows, apply_scales, unscaled_block_scores, unscaled_columns
from lit_attr.curvature.capture import LayerCapture, grad_enabled, grouped_gradients, grouped_scores
from lit_attr.curvature.layers import gradient_matrix_shape
from lit_attr.diffusion.loss import EpsModel, call_model, expand_draws, expand_labels, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule

LAYER_QUERY_ELEMENTS = 2**26
"""A layer's query columns are converted to float32 at once up to this many values (256 MiB)."""


def captured_layer_rows(
    model: nn.Module | None, modules: dict[str, nn.Module], row_loss_fn: Callable[[], Tensor], num_rows: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One forward and one backward over R rows: each layer's input and output gradient, by name.

    Args:
        model: owner of ``modules`` (its parameter gradients are switched off during the pass),
            or None for the layers' own parameters.
        modules: K-FAC'd layers by name.
        row_loss_fn: runs the forward over R rows (example-major) and returns per-row contributions
            (R,); the backward propagates ``d sum(contributions) / d z`` to every layer output z.
        num_rows: R, the expected length of the contributions.

    Returns:
        ``(inputs, grad_outputs)``: name -> (R, ...) tensors.
    """
    with grad_enabled(), LayerCapture(modules, model, param_grads=False) as capture:
        contributions = row_loss_fn()
        capture.check_all_ran()
        if tuple(contributions.shape) != (num_rows,):
            raise ValueError(f"row_loss_fn returned shape {tuple(contributions.shape)}, expected {(num_rows,)}.")
        grad_outputs = capture.backward(contributions, torch.ones_like(contributions))
        return capture.inputs, grad_outputs


def per_example_gradients(
    model: nn.Module | None, modules: dict[str, nn.Module], row_loss_fn: Callable[[], Tensor], num_examples: int,
    rows_per_example: int,
) -> dict[str, Tensor]:
    """Gradients of per-example quantities that are sums over their rows.

    Args:
        model: owner of ``modules``, or None (see ``captured_layer_rows``).
        modules: K-FAC'd layers by name.
        row_loss_fn: runs the forward over R = ``num_examples * rows_per_example`` rows
            (example-major) and returns per-row contributions (R,); example b's quantity is the sum
            of rows ``b S ... b S + S - 1`` (e.g. ``loss_row / S``).
        num_examples: B.
        rows_per_example: S.

    Returns:
        name -> (B, out, in+1) gradient matrices (``[dW | db]`` layout).
    """
    inputs, grad_outputs = captured_layer_rows(model, modules, row_loss_fn, num_examples * rows_per_example)
    return {
        name: grouped_gradients(module, inputs[name], grad_outputs[name], rows_per_example)
        for name, module in modules.items()
    }


def per_example_scores(
    model: nn.Module | None, modules: dict[str, nn.Module], row_loss_fn: Callable[[], Tensor], num_examples: int,
    rows_per_example: int, queries: CompressedRows,
) -> Tensor:
    """Inner products of the per-example gradients with Q query rows, layer by layer: (B, Q).

    ``score[b, q] = sum_layers <grad_b^l, v_q^l>`` with ``v_q`` the (compressed) preconditioned query
    gradient flattened in ``flatten_gradients`` order. The same numbers as
    ``score_against(queries, flatten_gradients(per_example_gradients(...)))``, but at most one layer's
    (B, out, in+1) gradients exist at a time, never the (B, num_params) matrix; convolutions on small
    maps are contracted chunk by chunk (``lit_attr.curvature.capture.grouped_scores``).

    Args are those of ``per_example_gradients``, plus ``queries``: (Q, num_params) compressed rows.
    """
    inputs, grad_outputs = captured_layer_rows(model, modules, row_loss_fn, num_examples * rows_per_example)
    scores, start = None, 0
    for name, module in modules.items():
        out, cols = gradient_matrix_shape(module)
        if out * cols * queries.shape[0] <= LAYER_QUERY_ELEMENTS:  # the layer's queries in float32 at once
            block = unscaled_columns(queries, start, out * cols).view(-1, out, cols)
            part = grouped_scores(module, inputs[name], grad_outputs[name], rows_per_example, block).float()
        else:  # chunked conversion of the queries' columns (bounded memory)
            grads = grouped_gradients(module, inputs[name], grad_outputs[name], rows_per_example).flatten(1)
            part = unscaled_block_scores(queries, grads, start)
        scores = part if scores is None else scores.add_(part)
        start += out * cols
    if start != queries.shape[1]:
        raise ValueError(f"The layers have {start} parameters but the queries D={queries.shape[1]}.")
    return apply_scales(queries, scores)


def _loss_rows(eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor,
               labels: Tensor | None = None) -> Callable[[], Tensor]:
    """``row_loss_fn`` of the per-example DDPM loss: each row's loss divided by S (labels: (B,) or None)."""
    num_draws = timesteps.shape[1]

    def row_loss_fn() -> Tensor:
        rows = expand_draws(x0.clone(), timesteps.to(x0.device).clone(), noise.to(x0).clone())
        return loss_per_draw(eps_model, schedule, *rows, expand_labels(labels, num_draws)) / num_draws

    return row_loss_fn


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
    row_loss_fn = _loss_rows(eps_model, schedule, x0, timesteps, noise, labels)
    return per_example_gradients(model, modules, row_loss_fn, num_examples, num_draws)


def per_example_sqnorm_gradients(
    eps_model: EpsModel, schedule: DiffusionSchedule, modules: dict[str, nn.Module], x0: Tensor, timesteps: Tensor,
    noise: Tensor, model: nn.Module | None = None, labels: Tensor | None = None,
) -> dict[str, Tensor]:
    """Gradients of the squared output norm ``||eps_theta(x_t, t)||^2 / D`` averaged over S draws: D-TRAK's
    training and measurement function (Zheng et al. 2024; paper section 4); args and returns as
    ``per_example_loss_gradients``."""
    num_examples, num_draws = timesteps.shape

    def row_loss_fn() -> Tensor:
        x, t, eps = expand_draws(x0.clone(), timesteps.to(x0.device).clone(), noise.to(x0).clone())
        output = call_model(eps_model, schedule.q_sample(x, t, eps), t, expand_labels(labels, num_draws))
        return output.pow(2).flatten(1).mean(dim=1) / num_draws

    return per_example_gradients(model, modules, row_loss_fn, num_examples, num_draws)


def per_example_loss_scores(
    eps_model: EpsModel, schedule: DiffusionSchedule, modules: dict[str, nn.Module], x0: Tensor, timesteps: Tensor,
    noise: Tensor, queries: CompressedRows, model: nn.Module | None = None, labels: Tensor | None = None,
) -> Tensor:
    """``per_example_scores`` of the per-example DDPM loss (args of ``per_example_loss_gradients``): (B, Q)."""
    num_examples, num_draws = timesteps.shape
    row_loss_fn = _loss_rows(eps_model, schedule, x0, timesteps, noise, labels)
    return per_example_scores(model, modules, row_loss_fn, num_examples, num_draws, queries)


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
