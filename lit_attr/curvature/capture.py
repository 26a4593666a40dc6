"""Capture layer inputs and output gradients with hooks, and the per-layer sums built from them.

For a K-FAC'd layer with input ``x`` and output ``z = W a + b`` at each of its P weight-sharing
positions (conv output pixels, attention tokens; P = 1 for a plain Linear), the *expanded* views are

- inputs ``a``: (R, P, in_eff [+1]) -- unfolded conv patches (``F.unfold``) with a ones column
  when the layer has a bias;
- output gradients ``g = dL/dz``: (R, P, out);

and the *reduce* views (Eschenhagen et al. 2023, K-FAC-reduce) are the mean of ``a`` over P and the
sum of ``g`` over P. Everything K-FAC, EK-FAC and per-example gradients need is a contraction of
these views; the functions below compute those contractions without materialising the expanded
conv patches of a whole batch (``conv_gram.conv_patch_gram`` for K-FAC's A,
``conv_grads.conv_group_gradients`` for per-example gradients); the plain ``F.unfold`` view is
``tests/reference.py``'s ``expanded_inputs``, the oracle they are tested against.
"""

from __future__ import annotations

from collections.abc import Iterator
import weakref
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from lit_attr.curvature.conv_grads import conv_group_gradients, unfolded_group_scores, uses_unfolded_kernel
from lit_attr.curvature.conv_gram import conv_patch_gram, conv_plan_for
from lit_attr.curvature.layers import has_bias
from lit_attr.errors import ConfigError, UnsupportedLayerError


@contextmanager
def grad_enabled() -> Iterator[None]:
    """Autograd on, even inside ``torch.no_grad`` / ``torch.inference_mode`` (Lightning's eval loops).

    Tensors created in inference mode cannot be saved for backward: build the model input inside
    this context (``KFACAccumulator.update_ddpm`` does).
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


class LayerCapture:
    """Context manager that records each layer's input and the gradient w.r.t. its output.

    Forward hooks store the (detached) input of every module in ``modules`` and put a tensor hook
    on its output, so any backward pass -- ``capture.backward(...)`` or the caller's own
    ``loss.backward()`` -- fills ``grad_outputs``. Each module must run once per forward.

    With ``param_grads=False`` the parameters of ``model`` (or of ``modules``) have
    ``requires_grad`` switched off for the duration, so the backward computes no weight gradients;
    a layer whose output would then not require grad gets its output turned into a graph leaf, so
    gradients still reach every layer. The flags are restored on exit.

    Args:
        modules: layers to capture, by name (see ``select_kfac_modules``).
        model: whose parameter flags to switch off; defaults to the parameters of ``modules``.
        param_grads: keep parameter gradients on (True) or skip them (False).
    """

    def __init__(self, modules: dict[str, nn.Module], model: nn.Module | None = None, param_grads: bool = True) -> None:
        self.modules = modules
        self.model = model
        self.param_grads = param_grads
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.grad_outputs: dict[str, Tensor] = {}
        self._handles: list = []
        self._flags: list[tuple[nn.Parameter, bool]] = []

    def __enter__(self) -> LayerCapture:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(partial(self._forward_hook, name), with_kwargs=True))
        if not self.param_grads:
            owner = self.model if self.model is not None else nn.ModuleList(self.modules.values())
            self._flags = [(p, p.requires_grad) for p in owner.parameters()]
            for param, _ in self._flags:
                param.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.outputs = {}  # drop the graph; inputs and grad_outputs stay readable
        for handle in self._handles:
            handle.remove()
        for param, flag in self._flags:
            param.requires_grad_(flag)
        self._handles, self._flags = [], []

    def clear(self) -> None:
        """Forget captured tensors (call between forward passes)."""
        self.inputs, self.outputs, self.grad_outputs = {}, {}, {}

    def check_all_ran(self) -> None:
        """Raise ``ConfigError`` naming the layers that did not run in the last forward pass."""
        missing = [name for name in self.modules if name not in self.inputs]
        if missing:
            raise ConfigError(
                f"Layers {missing} did not run in the forward pass, so they have no curvature or gradient; "
                "leave them out of `modules` (e.g. filter the dict from select_kfac_modules)."
            )

    def _forward_hook(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> Tensor | None:
        if name in self.inputs:
            raise UnsupportedLayerError(
                f"Layer {name!r} ran twice in one forward pass; shared (re-used) layers are not supported. "
                "Call capture.clear() between forward passes."
            )
        self.inputs[name] = (args[0] if args else kwargs["input"]).detach()
        if not torch.is_grad_enabled():
            return None
        replaced = not output.requires_grad
        if replaced:  # no parameter or upstream tensor requires grad: start the graph here
            output = output.detach().requires_grad_().clone()
        # A weak reference: a strong one would make a cycle through autograd's C++ hook storage
        # (output -> hook -> capture -> outputs -> output) that Python's GC cannot free.
        output.register_hook(partial(_store_grad, weakref.ref(self), name))
        self.outputs[name] = output
        return output if replaced else None


    def backward(self, output: Tensor, grad_output: Tensor, retain_graph: bool = False) -> dict[str, Tensor]:
        """Backpropagate ``grad_output`` from ``output`` to the layer outputs only (no ``.grad``).

        Args:
            output: the model output, e.g. (R, C, H, W).
            grad_output: vector to backpropagate, same shape as ``output``.
            retain_graph: keep the graph for another pass.

        Returns:
            ``grad_outputs``: name -> dL/dz of the layer output's shape (zeros for unused layers).
        """
        names = list(self.outputs)
        grads = torch.autograd.grad(
            output, [self.outputs[n] for n in names], grad_output, retain_graph=retain_graph, allow_unused=True
        )
        for name, grad in zip(names, grads):
            self.grad_outputs[name] = torch.zeros_like(self.outputs[name]) if grad is None else grad
        return self.grad_outputs


# ---------------------------------------------------------------------------- expanded / reduced views


def autocast_off(device: torch.device) -> torch.autocast:
    """Autocast disabled on ``device``: contractions of captured tensors keep float32 under bf16-mixed."""
    return torch.autocast(device_type=device.type, enabled=False)


def at_least_float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is float16/bfloat16 (captures under autocast), else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _store_grad(capture_ref: weakref.ref, name: str, grad: Tensor) -> None:
    """Tensor hook: record dL/dz of layer ``name`` in the (still alive) capture."""
    capture = capture_ref()
    if capture is not None:
        capture.grad_outputs[name] = grad.detach()


def expanded_grad_outputs(module: nn.Module, g: Tensor) -> Tensor:
    """Gradients w.r.t. the layer output per position: (R, P, out)."""
    if isinstance(module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def reduced_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """K-FAC-reduce inputs: the mean of the expanded inputs over positions, (R, in_eff [+1])."""
    if isinstance(module, nn.Conv2d):
        plan = conv_plan_for(module, x)
        sums = x.flatten(2) @ plan.tap_windows.to(x).T  # (R, C, kk): window sum per tap
        a = (sums / plan.num_positions).flatten(1)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1]).mean(dim=1)
    return torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1) if has_bias(module) else a


def reduced_grad_outputs(module: nn.Module, g: Tensor) -> Tensor:
    """K-FAC-reduce output gradients: the sum over positions, (R, out)."""
    return expanded_grad_outputs(module, g).sum(dim=1)


# ---------------------------------------------------------------------------- covariance sums


def input_covariance_sum(module: nn.Module, x: Tensor, reduce: bool = False) -> tuple[Tensor, int]:
    """Sum of ``a a^T`` over rows (and positions, unless ``reduce``), and the number of terms.

    Expand: ``sum_{r,p} a_rp a_rp^T`` over (R P) terms; reduce: ``sum_r abar_r abar_r^T`` over R.
    For Conv2d (expand) this is computed without unfolding, see ``conv_patch_gram``.

    Returns:
        ``(sum of shape (in_eff [+1], in_eff [+1]), number of terms)``.
    """
    if reduce:
        a = reduced_inputs(module, x)
        return a.T @ a, a.shape[0]
    if isinstance(module, nn.Conv2d):
        plan = conv_plan_for(module, x)
        gram = conv_patch_gram(module, x, plan)
        col = (x.sum(dim=0).flatten(1) @ plan.tap_windows.to(x).T).flatten()  # sum_{r,p} a_rp, (C kk,)
        count = x.shape[0] * plan.num_positions
    else:
        flat = x.reshape(-1, x.shape[-1])
        gram, col, count = flat.T @ flat, flat.sum(dim=0), flat.shape[0]
    if not has_bias(module):
        return gram, count
    corner = col.new_full((1, 1), float(count))
    return torch.cat([torch.cat([gram, col[:, None]], 1), torch.cat([col[None], corner], 1)], 0), count


def grad_covariance_sum(module: nn.Module, g: Tensor, reduce: bool = False) -> Tensor:
    """``sum_{r,p} g_rp g_rp^T`` (expand) or ``sum_r (sum_p g_rp)(sum_p g_rp)^T`` (reduce), (out, out)."""
    if reduce:
        s = reduced_grad_outputs(module, g)
        return s.T @ s
    if isinstance(module, nn.Conv2d):
        flat = g.transpose(0, 1).reshape(g.shape[1], -1)
        return flat @ flat.T
    flat = g.reshape(-1, g.shape[-1])
    return flat.T @ flat


# ---------------------------------------------------------------------------- per-group gradients


def grouped_weight_and_bias(module: nn.Module, x: Tensor, g: Tensor, group_size: int = 1) -> tuple[Tensor, Tensor | None]:
    """The two parts of ``grouped_gradients``: weight (groups, out, in_eff) and ``grouped_bias``.

    Linear: one batched matmul over the (groups, S P, .) views. Conv2d: ``conv_group_gradients``
    (a grouped-convolution weight gradient, or unfolded patches and a batched matmul on small maps).
    Inputs as ``grouped_gradients``; x and g already in float32 or wider.
    """
    if isinstance(module, nn.Conv2d):
        weight = conv_group_gradients(module, x, g, group_size)
    else:
        groups = x.shape[0] // group_size
        weight = torch.bmm(g.reshape(groups, -1, g.shape[-1]).transpose(1, 2), x.reshape(groups, -1, x.shape[-1]))
    return weight, grouped_bias(module, g, group_size)


def grouped_bias(module: nn.Module, g: Tensor, group_size: int) -> Tensor | None:
    """Bias gradients ``sum_{rows in group, p} g_rp`` (groups, out), or None for a layer without bias."""
    if not has_bias(module):
        return None
    groups = g.shape[0] // group_size
    if isinstance(module, nn.Conv2d):
        return g.reshape(groups, group_size, g.shape[1], -1).sum(dim=(1, 3))
    return g.reshape(groups, -1, g.shape[-1]).sum(dim=1)


def grouped_gradients(module: nn.Module, x: Tensor, g: Tensor, group_size: int = 1) -> Tensor:
    """Gradient matrices summed over groups of consecutive rows: (R / group_size, out, in_eff [+1]).

    Row r's gradient is ``sum_p g_rp a_rp^T`` (bias column: ``sum_p g_rp``); rows are summed in
    example-major groups (row ``b S + s`` belongs to group b). ``group_size=1`` gives per-row
    gradients (EK-FAC), ``group_size=S`` per-example gradients over S draws
    (``grouped_weight_and_bias`` computes the two parts).

    Args:
        module: a Linear or Conv2d.
        x: captured input, (R, ...).
        g: gradient w.r.t. the output, (R, ...).
        group_size: rows per group; must divide R.

    Half-precision captures (``--trainer.precision bf16-mixed``) are contracted in float32.
    """
    _check_groups(x, group_size)
    x, g = at_least_float32(x), at_least_float32(g)
    with autocast_off(x.device):
        weight, bias = grouped_weight_and_bias(module, x, g, group_size)
    return weight if bias is None else torch.cat([weight, bias.unsqueeze(2)], dim=2)


def grouped_scores(module: nn.Module, x: Tensor, g: Tensor, group_size: int, queries: Tensor) -> Tensor:
    """``grouped_gradients(module, x, g, group_size).flatten(1) @ queries.T``: (R / group_size, Q).

    ``queries``: (Q, out, in_eff [+1]) float rows in the gradient-matrix layout. The weight and bias
    parts are contracted separately (the ``[dW | db]`` block is never assembled). Convolutions on small
    maps contract each chunk of per-group gradients while it is in cache
    (``conv_grads.unfolded_group_scores``); other layers form the (groups, out, in_eff) weight block first.
    """
    _check_groups(x, group_size)
    x, g = at_least_float32(x), at_least_float32(g)
    queries = queries.to(x.dtype)
    weight_columns = queries.shape[2] - int(has_bias(module))
    weight_queries = queries[:, :, :weight_columns]
    with autocast_off(x.device):
        if isinstance(module, nn.Conv2d) and uses_unfolded_kernel(g, group_size):
            scores = unfolded_group_scores(module, x, g, group_size, weight_queries)
            bias = grouped_bias(module, g, group_size)
        else:
            weight, bias = grouped_weight_and_bias(module, x, g, group_size)
            scores = weight.flatten(1) @ weight_queries.reshape(len(queries), -1).T
        if bias is not None:
            scores += bias @ queries[:, :, -1].T
        return scores


def _check_groups(x: Tensor, group_size: int) -> None:
    if x.shape[0] % group_size:
        raise ValueError(f"group_size={group_size} does not divide the number of rows {x.shape[0]}.")
