"""Per-group weight gradients of a convolution: ``grad_b = sum_{r in group b} sum_p g_rp u_rp^T``.

u_rp are the unfolded input patches (C kk values, ``(c, tap)`` order as ``weight.reshape(out, -1)``)
and g_rp the output gradients at output position p of row r. Two exact kernels, chosen by the
number of positions a group sums over (``S Ho Wo``):

- few positions (small feature maps, e.g. the 4 x 4 levels of a U-Net): unfold the group's patches
  channels-last with one strided copy and contract with one batched matmul, ``(out, S P) @ (S P,
  kk C)``, a few examples at a time so the patches stay small;
- many positions: the weight gradient of a grouped convolution with one group per example and the
  S rows as its batch (the framework's im2col-free kernel). Its CPU kernels are several times slower
  than the ungrouped one when the maps are small, and close to it on large maps (measured in
  ``benchmarks/bench_gradients.py``; README "Performance").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lit_attr.curvature.layers import conv_padding

IM2COL_MAX_POSITIONS = 128
"""Groups summing over at most this many (row, output position) pairs use the unfolded kernel."""
IM2COL_CHUNK_ELEMENTS = 2**21
"""Patch elements unfolded at once (8 MiB in float32)."""


def conv_group_gradients(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int) -> Tensor:
    """(groups, out, C_in kh kw): weight gradients summed over groups of ``group_size`` consecutive rows.

    Args:
        module: the Conv2d (geometry only).
        x: its input (R, C_in, H, W).
        g: gradient w.r.t. its output (R, out, Ho, Wo).
        group_size: rows per group; divides R.
    """
    if group_size * g.shape[2] * g.shape[3] <= IM2COL_MAX_POSITIONS:
        return unfolded_group_gradients(module, x, g, group_size)
    return grouped_conv_gradients(module, x, g, group_size)


def grouped_conv_gradients(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int) -> Tensor:
    """``conv_group_gradients`` as the weight gradient of a grouped convolution (one group per example)."""
    groups, channels, out = x.shape[0] // group_size, x.shape[1], g.shape[1]

    def draws_as_batch(t: Tensor) -> Tensor:  # (groups S, C, H, W) -> (S, groups C, H, W)
        return t.reshape(groups, group_size, *t.shape[1:]).transpose(0, 1).reshape(group_size, -1, *t.shape[2:])

    weight = torch.nn.grad.conv2d_weight(
        draws_as_batch(x), (groups * out, channels, *module.kernel_size), draws_as_batch(g),
        module.stride, conv_padding(module), module.dilation, groups=groups,
    )
    return weight.reshape(groups, out, -1)  # one group: conv2d_weight may return a non-contiguous view


def unfolded_group_gradients(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int) -> Tensor:
    """``conv_group_gradients`` from channels-last patches and one batched matmul per chunk of groups."""
    rows, channels, height, width = x.shape
    groups, out, (kh, kw) = rows // group_size, g.shape[1], module.kernel_size
    out_h, out_w = g.shape[2:]
    positions = group_size * out_h * out_w
    grads = g.reshape(groups, group_size, out, out_h * out_w).transpose(1, 2).reshape(groups, out, positions)
    result = x.new_empty(groups, out, channels, kh * kw)
    chunk = max(1, IM2COL_CHUNK_ELEMENTS // (positions * channels * kh * kw))
    for start in range(0, groups, chunk):
        stop = min(start + chunk, groups)
        patches = channels_last_patches(module, x[start * group_size : stop * group_size], out_h, out_w)
        block = torch.bmm(grads[start:stop], patches.reshape(stop - start, positions, kh * kw * channels))
        result[start:stop] = block.view(stop - start, out, kh * kw, channels).transpose(2, 3)
    return result.view(groups, out, -1)


def channels_last_patches(module: nn.Conv2d, x: Tensor, out_h: int, out_w: int) -> Tensor:
    """Unfolded patches (R, Ho, Wo, kh, kw, C) of x (R, C, H, W), one copy from a zero-padded channels-last x."""
    rows, channels, height, width = x.shape
    (pad_h, pad_w), (kh, kw) = conv_padding(module), module.kernel_size
    padded = x.new_zeros(rows, height + 2 * pad_h, width + 2 * pad_w, channels)
    padded[:, pad_h : pad_h + height, pad_w : pad_w + width] = x.permute(0, 2, 3, 1)
    s_r, s_h, s_w, s_c = padded.stride()
    (st_h, st_w), (d_h, d_w) = module.stride, module.dilation
    view = padded.as_strided(
        (rows, out_h, out_w, kh, kw, channels), (s_r, s_h * st_h, s_w * st_w, s_h * d_h, s_w * d_w, s_c)
    )
    return view.contiguous()
