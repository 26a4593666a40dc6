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

IM2COL_MAX_POSITIONS = 512
"""Groups summing over at most this many (row, output position) pairs use the unfolded kernel (512: the
4 x 4 maps of a U-Net at S = 32 draws, the 8 x 8 maps at S <= 8; 128 measured 5-10% slower on CPU
(0.7M digits U-Net, S = 4 and 32; README "Performance"))."""
IM2COL_CHUNK_ELEMENTS = 2**20
"""Patch elements unfolded at once on a CPU (4 MiB in float32: a chunk's patches stay in the last-level cache)."""
IM2COL_CHUNK_ELEMENTS_GPU = 2**24
"""The same on a GPU (64 MiB in float32): there each chunk costs four kernel launches, and cache-sized
chunks of a small map turned one batched matmul per layer into dozens of launch-bound ones."""


def uses_unfolded_kernel(g: Tensor, group_size: int) -> bool:
    """Whether groups of ``group_size`` rows with output gradients g (R, out, Ho, Wo) use the unfolded kernel."""
    return group_size * g.shape[2] * g.shape[3] <= IM2COL_MAX_POSITIONS


def conv_group_gradients(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int) -> Tensor:
    """(groups, out, C_in kh kw): weight gradients summed over groups of ``group_size`` consecutive rows.

    Args:
        module: the Conv2d (geometry only).
        x: its input (R, C_in, H, W).
        g: gradient w.r.t. its output (R, out, Ho, Wo).
        group_size: rows per group; divides R.
    """
    if uses_unfolded_kernel(g, group_size):
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
    groups, out, channels = x.shape[0] // group_size, g.shape[1], x.shape[1]
    result = x.new_empty(groups, out, channels, module.kernel_size[0] * module.kernel_size[1])
    for start, stop, block in unfolded_group_chunks(module, x, g, group_size):
        result[start:stop] = block.transpose(2, 3)
    return result.view(groups, out, -1)


def unfolded_group_scores(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int, queries: Tensor) -> Tensor:
    """``conv_group_gradients(...).flatten(1) @ queries.T`` chunk by chunk: (groups, Q).

    The gradients of a chunk of groups are contracted while they are in cache and never written
    out; ``queries`` (Q, out, C_in kh kw) are permuted once to the patches' (tap, channel) order.
    """
    out, channels, (kh, kw) = g.shape[1], x.shape[1], module.kernel_size
    tap_major = queries.reshape(-1, out, channels, kh * kw).transpose(2, 3).reshape(len(queries), -1)
    scores = x.new_empty(x.shape[0] // group_size, len(queries))
    for start, stop, block in unfolded_group_chunks(module, x, g, group_size):
        torch.mm(block.reshape(stop - start, -1), tap_major.T, out=scores[start:stop])
    return scores


def unfolded_group_chunks(module: nn.Conv2d, x: Tensor, g: Tensor, group_size: int, elements: int | None = None):
    """Yield ``(start, stop, block)``: the gradients of groups [start, stop) as (groups, out, kh kw, C_in).

    The layer's input is padded channels-last once (``padded_channels_last``); each chunk unfolds its
    rows' patches (``patches_of_padded``) and contracts them with the output gradients in one batched
    matmul, ``(out, S P) @ (S P, kh kw C)`` per group.
    """
    rows, channels = x.shape[:2]
    groups, out, (kh, kw) = rows // group_size, g.shape[1], module.kernel_size
    out_h, out_w = g.shape[2:]
    positions = group_size * out_h * out_w
    grads = g.reshape(groups, group_size, out, out_h * out_w).transpose(1, 2).reshape(groups, out, positions)
    elements = elements or (IM2COL_CHUNK_ELEMENTS if x.device.type == "cpu" else IM2COL_CHUNK_ELEMENTS_GPU)
    chunk = max(1, elements // (positions * channels * kh * kw))
    padded = padded_channels_last(module, x)
    for start in range(0, groups, chunk):
        stop = min(start + chunk, groups)
        patches = patches_of_padded(module, padded[start * group_size : stop * group_size], out_h, out_w)
        block = torch.bmm(grads[start:stop], patches.reshape(stop - start, positions, kh * kw * channels))
        yield start, stop, block.view(stop - start, out, kh * kw, channels)


def padded_channels_last(module: nn.Conv2d, x: Tensor) -> Tensor:
    """x (R, C, H, W) zero-padded by the convolution's padding, channels last: (R, H + 2 pad_h, W + 2 pad_w, C)."""
    rows, channels, height, width = x.shape
    pad_h, pad_w = conv_padding(module)
    padded = x.new_zeros(rows, height + 2 * pad_h, width + 2 * pad_w, channels)
    padded[:, pad_h : pad_h + height, pad_w : pad_w + width] = x.permute(0, 2, 3, 1)
    return padded


def patches_of_padded(module: nn.Conv2d, padded: Tensor, out_h: int, out_w: int) -> Tensor:
    """The patches (R, Ho, Wo, kh, kw, C) of ``padded_channels_last`` rows, as one strided copy."""
    rows, channels = padded.shape[0], padded.shape[3]
    kh, kw = module.kernel_size
    s_r, s_h, s_w, s_c = padded.stride()
    (st_h, st_w), (d_h, d_w) = module.stride, module.dilation
    view = padded.as_strided(
        (rows, out_h, out_w, kh, kw, channels), (s_r, s_h * st_h, s_w * st_w, s_h * d_h, s_w * d_w, s_c),
        padded.storage_offset(),
    )
    return view.contiguous()
