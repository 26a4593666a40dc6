"""Dense oracles for the curvature and gradient tests (float64, tiny models only).

- ``exact_ggn_blocks``: the exact GGN of the mean pixel-mean loss over rows,
  ``(1/R) sum_rows J^T (2/D) J``, with J from ``torch.func.jacrev`` of the model output w.r.t. each
  K-FAC'd layer's ``[W | b]`` matrix; one dense block per layer in the row-major (out, in+1) layout.
- ``damped_solve``: ``torch.linalg.solve(M + damping I, v)``.
- ``loop_per_example_gradients``: one example at a time, plain autograd + ``.grad``.
- ``expanded_inputs``: a layer's inputs per weight-sharing position, conv patches by ``F.unfold``.
- ``assert_close_report``: ``allclose`` that prints the worst entries when it fails.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from lit_attr.curvature.layers import conv_padding, has_bias, layer_gradient_matrix, split_gradient_matrix


def expanded_inputs(module: nn.Module, x: Tensor, append_ones: bool | None = None) -> Tensor:
    """Layer inputs per position: (R, P, in_eff [+1]); conv patches via ``F.unfold``.

    Args:
        module: a Linear or Conv2d.
        x: its input, (R, ..., in) for Linear, (R, C_in, H, W) for Conv2d.
        append_ones: append the bias column of ones (default: iff the layer has a bias).
    """
    if isinstance(module, nn.Conv2d):
        patches = F.unfold(x, module.kernel_size, module.dilation, conv_padding(module), module.stride)
        a = patches.transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if has_bias(module) if append_ones is None else append_ones:
        a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
    return a


def layer_matrices(modules: dict[str, nn.Module]) -> dict[str, Tensor]:
    """Current ``[W | b]`` matrix of every layer, (out, in+1), detached."""
    out = {}
    for name, module in modules.items():
        weight = module.weight.detach().reshape(module.weight.shape[0], -1)
        out[name] = torch.cat([weight, module.bias.detach()[:, None]], 1) if has_bias(module) else weight
    return out


def parameter_overrides(
    modules: dict[str, nn.Module], matrices: dict[str, Tensor], prefix: str = ""
) -> dict[str, Tensor]:
    """``functional_call`` overrides (``{prefix}{name}.weight`` / ``.bias``) from gradient-layout matrices."""
    overrides = {}
    for name, matrix in matrices.items():
        weight, bias = split_gradient_matrix(modules[name], matrix)
        overrides[f"{prefix}{name}.weight"] = weight
        if bias is not None:
            overrides[f"{prefix}{name}.bias"] = bias
    return overrides


def exact_ggn_blocks(
    model: nn.Module, modules: dict[str, nn.Module], forward: Callable[[nn.Module], Tensor]
) -> dict[str, Tensor]:
    """Block-diagonal exact GGN ``(1/R) sum_r J_r^T (2/D) J_r`` per layer, (out (in+1), out (in+1)).

    Args:
        model: the network owning ``modules``.
        modules: K-FAC'd layers by name (names relative to ``model``).
        forward: ``forward(module_like) -> output (R, ...)``; called with a functional stand-in.
    """
    matrices = layer_matrices(modules)

    def output_of(mats: dict[str, Tensor]) -> Tensor:
        overrides = parameter_overrides(modules, mats)
        return forward(lambda *args: functional_call(model, overrides, args))

    output = output_of(matrices)
    num_rows, dim = output.shape[0], output[0].numel()
    jacobians = jacrev(output_of)(matrices)
    blocks = {}
    for name, jac in jacobians.items():
        j = jac.reshape(num_rows * dim, -1)
        blocks[name] = (2.0 / dim) * j.T @ j / num_rows
    return blocks


def damped_solve(matrix: Tensor, damping: float, v: Tensor) -> Tensor:
    """``(matrix + damping I)^{-1} v`` for v of shape (n,) or (n, k)."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype)
    return torch.linalg.solve(matrix + damping * eye, v)


def loop_per_example_gradients(
    modules: dict[str, nn.Module], example_loss: Callable[[int], Tensor], num_examples: int
) -> dict[str, Tensor]:
    """Gradient matrices (B, out, in+1) of ``example_loss(b)``, one example at a time with ``.grad``."""
    rows: dict[str, list[Tensor]] = {name: [] for name in modules}
    params = [p for m in modules.values() for p in m.parameters(recurse=False)]
    for b in range(num_examples):
        for p in params:
            p.grad = None
        example_loss(b).backward()
        for name, module in modules.items():
            rows[name].append(layer_gradient_matrix(module).clone())
    for p in params:
        p.grad = None
    return {name: torch.stack(r) for name, r in rows.items()}


def assert_close_report(
    actual: Tensor, expected: Tensor, rtol: float = 1e-7, atol: float = 1e-10, name: str = "", worst: int = 5
) -> None:
    """``torch.allclose`` that, on failure, reports the worst entries, their ratio and the tolerances."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual - expected).abs()
    excess = diff - (atol + rtol * expected.abs())
    if (excess <= 0).all():
        return
    order = excess.flatten().argsort(descending=True)[:worst]
    lines = [f"{name}: {int((excess > 0).sum())}/{excess.numel()} entries off (rtol={rtol:g}, atol={atol:g}); "
             f"max|expected|={expected.abs().max().item():.4g}, max|diff|={diff.max().item():.4g}"]
    for flat in order.tolist():
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), actual.shape))
        a, e = actual[idx].item(), expected[idx].item()
        ratio = a / e if e != 0 else float("inf")
        lines.append(f"  at {idx}: actual={a:.8g} expected={e:.8g} |diff|={abs(a - e):.3g} ratio={ratio:.6g}")
    raise AssertionError("\n".join(lines))
