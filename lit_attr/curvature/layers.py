"""Which layers K-FAC covers, and how a layer's parameters map to one gradient matrix.

K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions) is applied to every
``nn.Linear`` and every ``nn.Conv2d`` of a model, including the q/k/v/out projections of the
attention blocks (paper section 3.1.2 and App. G.3). All other parameters, in particular those of
the normalisation layers (GroupNorm, LayerNorm), are *held fixed*: they get no curvature block and
no gradient, so they carry no influence. This is the paper's choice ("ignoring the parameters in
the normalisation layers").

Layout used everywhere in ``lit_attr.curvature`` and ``lit_attr.attribution``: a layer's weight and
bias form one block, the *gradient matrix* ``[dW | db]`` of shape ``(out, in_eff + 1)``, where
``in_eff = in_features`` for Linear and ``C_in * kh * kw`` for Conv2d (``dW = weight.reshape(out,
-1)``-shaped). Without a bias there is no last column. Flattened row-major, a Kronecker-factored
block of that matrix is ``kron(G, A)`` (G: output side, A: input side).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_attr.errors import UnsupportedLayerError

KFAC_LAYER_TYPES = (nn.Linear, nn.Conv2d)
"""Layer types with a K-FAC block."""


def select_kfac_modules(model: nn.Module, strict: bool = True) -> dict[str, nn.Module]:
    """The K-FAC'd layers of ``model``: every ``nn.Linear`` and ``nn.Conv2d``, by qualified name.

    Args:
        model: any module, e.g. a diffusers ``UNet2DModel``.
        strict: raise on linear-like layers K-FAC cannot handle (other convolutions, layers inside
            ``nn.MultiheadAttention``); with ``False`` they are held fixed like the norms.

    Returns:
        Ordered dict (``named_modules`` order) from qualified name to module.

    Raises:
        UnsupportedLayerError: for Conv2d with ``groups != 1``, non-``'zeros'`` padding mode or
            asymmetric ``'same'`` padding; with ``strict``, also for the layers named above.
    """
    selected: dict[str, nn.Module] = {}
    functional_parents = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        inside_mha = any(name.startswith(parent + ".") for parent in functional_parents)
        if isinstance(module, KFAC_LAYER_TYPES) and not inside_mha:
            check_supported(name, module)
            selected[name] = module
        elif strict and (inside_mha or _is_unsupported_linear_like(module)):
            raise UnsupportedLayerError(
                f"Layer {name!r} ({type(module).__name__}) has no K-FAC block: only nn.Linear and "
                "nn.Conv2d called as modules are supported. Replace it, or pass strict=False to hold "
                "its parameters fixed."
            )
    if not selected:
        raise UnsupportedLayerError(f"{type(model).__name__} has no nn.Linear or nn.Conv2d layer to K-FAC.")
    return selected


def _is_unsupported_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.Conv2d)


def check_supported(name: str, module: nn.Module) -> None:
    """Raise ``UnsupportedLayerError`` naming ``name`` if its K-FAC block cannot be computed."""
    if not isinstance(module, nn.Conv2d):
        return
    if module.groups != 1:
        raise UnsupportedLayerError(
            f"Conv2d {name!r} has groups={module.groups}; K-FAC here supports groups=1 only."
        )
    if module.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"Conv2d {name!r} has padding_mode={module.padding_mode!r}; only 'zeros' is supported."
        )
    conv_padding(module, name)


def conv_padding(module: nn.Conv2d, name: str = "") -> tuple[int, int]:
    """Symmetric zero padding (ph, pw) of a Conv2d, resolving ``'valid'`` and ``'same'``."""
    if module.padding == "valid":
        return 0, 0
    if module.padding == "same":
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        if any(t % 2 for t in total):
            raise UnsupportedLayerError(
                f"Conv2d {name!r} has padding='same' with an even receptive field, which pads "
                "asymmetrically; use explicit integer padding."
            )
        return total[0] // 2, total[1] // 2
    return int(module.padding[0]), int(module.padding[1])


def conv_output_size(module: nn.Conv2d, height: int, width: int) -> tuple[int, int]:
    """Spatial output size (Ho, Wo) of a Conv2d for an input of size (height, width)."""
    geometry = zip((height, width), module.kernel_size, module.stride, module.dilation, conv_padding(module))
    sizes = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, d, p in geometry]
    return sizes[0], sizes[1]


def has_bias(module: nn.Module) -> bool:
    """Whether the layer has a bias, i.e. its gradient matrix has the extra last column."""
    return getattr(module, "bias", None) is not None


def in_features_eff(module: nn.Module) -> int:
    """Input dimension of the weight matrix: in_features, or C_in * kh * kw for Conv2d."""
    return module.weight[0].numel()


def gradient_matrix_shape(module: nn.Module) -> tuple[int, int]:
    """Shape (out, in_eff + has_bias) of the layer's gradient matrix ``[dW | db]``."""
    return module.weight.shape[0], in_features_eff(module) + int(has_bias(module))


def gradient_shapes(modules: dict[str, nn.Module]) -> dict[str, tuple[int, int]]:
    """Gradient matrix shape of every layer, by name."""
    return {name: gradient_matrix_shape(module) for name, module in modules.items()}


def num_kfac_parameters(modules: dict[str, nn.Module]) -> int:
    """Number of parameters K-FAC covers (weights and biases of ``modules``)."""
    return sum(out * cols for out, cols in gradient_shapes(modules).values())


def layer_gradient_matrix(module: nn.Module) -> Tensor:
    """The layer's ``.grad`` as one matrix ``[dW | db]`` of shape (out, in_eff + has_bias).

    Raises:
        ValueError: if the weight (or bias) has no ``.grad``.
    """
    parts = [module.weight] + ([module.bias] if has_bias(module) else [])
    if any(p.grad is None for p in parts):
        raise ValueError(f"{type(module).__name__} has no .grad; run a backward pass first.")
    weight = module.weight.grad.reshape(module.weight.shape[0], -1)
    if not has_bias(module):
        return weight
    return torch.cat([weight, module.bias.grad.unsqueeze(1)], dim=1)


def split_gradient_matrix(module: nn.Module, matrix: Tensor) -> tuple[Tensor, Tensor | None]:
    """Inverse of ``layer_gradient_matrix`` for any (..., out, in_eff + has_bias) matrix.

    Returns:
        ``(weight_like, bias_like)`` of shapes (..., *weight.shape) and (..., out) or None.
    """
    lead = matrix.shape[:-2]
    n_in = in_features_eff(module)
    weight = matrix[..., :n_in].reshape(*lead, *module.weight.shape)
    bias = matrix[..., n_in] if has_bias(module) else None
    return weight, bias
