"""K-FAC's input factor of a convolution without unfolding: ``sum_{r,p} u_rp u_rp^T`` (expand).

For a Conv2d with input x (R, C, H, W) and unfolded patches u_rp (C kk values per output position p),
entry ``[(c, t1), (c', t2)]`` of the Gram matrix is ``sum_r sum_{q in window(t1)} x[r, c, q] x[r, c',
q + delta]`` with ``delta = t2 - t1`` (the displacement of the two kernel taps) and ``window(t1)`` the
input pixels tap t1 reads over all output positions. It depends on the taps only through the window
of t1 and delta. So per canonical displacement (one of each pair +-delta; the other is the
transpose), the pixels q of its range are grouped by their *pattern*, the set of tap pairs whose
window holds q, and each group's products are summed by one GEMM with contraction length
R x (group size):

    E_group = sum_{q in group} sum_r x[r, :, q] x[r, :, q + delta]^T,   block(t1, t2) = sum_groups [pattern] E_group.

On large maps with stride 1 almost every pixel is in every window (the *interior*), so instead one
GEMM over the whole range gives ``F = sum_q ...`` and each pair subtracts the few border groups it
misses: ``block = F - sum_groups [not pattern] E_group``. Both forms are exact and never materialise
per-pixel (C, C) products; 3x3 kernels need 13 displacements instead of 81 tap pairs. When many rows
share few small pixels (``H W C < PER_PIXEL_RATIO R``, e.g. 8 x 8 maps in batches of 512 rows), the
per-pixel products ``M[q]`` (one batched matmul with contraction length R) and a mask matmul are
cheaper than many small GEMMs, and are used instead. For stride-1 convolutions the full-image sums
of all displacements come from one real FFT instead (``spectral.lag_sums``: about 7x fewer
multiply-adds than 13 GEMMs on a 32 x 32 map), and the border groups are subtracted from them. Flat
pixel indices are used throughout: ``q + delta`` is the flat ``q + dy W + dx``; pixels whose ``x + dx``
leaves the image wrap to the next row (*outside*) and are in no window.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from lit_attr.curvature.layers import conv_output_size, conv_padding
from lit_attr.curvature.spectral import lag_sums

INTERIOR_FRACTION = 0.5
"""Subtract the border groups from a full-range GEMM when the interior holds at least this fraction."""
PER_PIXEL_RATIO = 256
"""Per-pixel products when ``H W C < PER_PIXEL_RATIO R`` (measured on CPU, README "Performance")."""
SPECTRAL = True
"""Full-image sums of stride-1 convolutions from one FFT (``spectral.lag_sums``) rather than GEMMs."""


@dataclass
class _Displacement:
    """One canonical displacement (dy, dx): flat ``shift``, pixel range [q0, q1) and tap ``pairs`` (t1, t2).

    ``groups``: flat pixel indices of each pattern group used; ``weights`` (pairs, groups): how each
    pair combines their sums (pattern indicators, or minus the missed groups when ``from_full``);
    ``inner_groups``/``inner_weights``: the same without the outside pixels, to subtract from the
    2-D full-image sum of ``spectral.lag_sums``; ``masks`` (pairs, q1 - q0): the window indicators
    of every pixel (per-pixel form).
    """

    delta: tuple[int, int]
    shift: int
    q0: int
    q1: int
    pairs: list[tuple[int, int]]
    groups: list[Tensor]
    weights: Tensor
    from_full: bool
    inner_groups: list[Tensor]
    inner_weights: Tensor
    masks: Tensor


class ConvPlan:
    """Index bookkeeping of ``conv_patch_gram`` for one conv geometry and input size.

    ``tap_windows`` (kk, H W): indicator of the input pixels tap t reads over all output positions.
    ``displacements``: the canonical displacements with their pattern groups.
    """

    def __init__(self, kernel, stride, dilation, padding, height: int, width: int, out_size) -> None:
        self.num_positions = out_size[0] * out_size[1]
        taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
        q = torch.arange(height * width)
        qy, qx = q // width, q % width

        def reads(tap: tuple[int, int], qy: Tensor, qx: Tensor) -> Tensor:
            ok = torch.ones_like(qy, dtype=torch.bool)
            for coord, t, s, d, p, n in zip((qy, qx), tap, stride, dilation, padding, out_size):
                o = coord - (t * d - p)
                ok &= (o >= 0) & (o % s == 0) & (o < s * n)
            return ok

        self.tap_windows = torch.stack([reads(t, qy, qx) for t in taps]).double()
        by_delta: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i1, t1 in enumerate(taps):
            for i2, t2 in enumerate(taps):
                dy, dx = (t2[0] - t1[0]) * dilation[0], (t2[1] - t1[1]) * dilation[1]
                if dy > 0 or (dy == 0 and dx >= 0):
                    by_delta.setdefault((dy, dx), []).append((i1, i2))
        self.displacements: list[_Displacement] = []
        for (dy, dx), pairs in by_delta.items():
            shift = dy * width + dx
            q0, q1 = max(0, -shift), min(height * width, height * width - shift)
            if q1 <= q0:
                continue
            sy, sx = qy[q0:q1], qx[q0:q1]
            inside = (sx + dx >= 0) & (sx + dx < width)
            masks = torch.stack([inside & reads(taps[i1], sy, sx) for i1, _ in pairs])  # (pairs, q1 - q0)
            if masks.any():
                self.displacements.append(_group_by_pattern((dy, dx), shift, q0, q1, pairs, masks, inside))
        self.spectral = tuple(stride) == (1, 1) and any(d.from_full for d in self.displacements)
        kk = len(taps)
        pairs = torch.tensor([pair for d in self.displacements for pair in d.pairs], dtype=torch.long).view(-1, 2)
        self.block_index = pairs[:, 0] * kk + pairs[:, 1]
        """(n_pairs,): where each canonical pair's (C, C) sum goes among the kk x kk blocks (t1 kk + t2)."""
        off_diagonal = pairs[:, 0] != pairs[:, 1]
        self.mirrored = off_diagonal.nonzero().flatten()
        """Pairs with t1 != t2, whose transpose fills block (t2, t1) too."""
        self.mirror_index = pairs[off_diagonal, 1] * kk + pairs[off_diagonal, 0]
        """Block (t2, t1) of each pair in ``mirrored``."""
        if self.spectral:
            self._batch_border_groups(height * width)

    def _batch_border_groups(self, num_pixels: int) -> None:
        """Index tensors of ``_spectral_sums``: every group of every displacement in one padded batch.

        ``full_lags``: the displacements summed over the full image by the FFT. ``pair_lag`` (n_pairs,):
        each pair's row among them, or ``len(full_lags)`` (a zero row) if its displacement is not from the
        full image. ``border_left`` / ``border_right`` (G, L): the pixels q and q + delta of each group,
        padded with ``num_pixels`` (a zero pixel appended to the image). ``border_weights`` (n_pairs, G):
        how each pair combines the group sums (``inner_weights`` or ``weights`` of its displacement).
        """
        full = [d for d in self.displacements if d.from_full]
        self.full_lags = [d.delta for d in full]
        lag_row = {d.delta: i for i, d in enumerate(full)}
        self.pair_lag = torch.tensor([lag_row.get(d.delta, len(full)) for d in self.displacements for _ in d.pairs])
        chosen = [(d.inner_groups, d.inner_weights) if d.from_full else (d.groups, d.weights) for d in self.displacements]
        groups = [(group, d.shift) for d, (gs, _) in zip(self.displacements, chosen) for group in gs]
        length = max((len(g) for g, _ in groups), default=0)
        self.border_left = torch.full((len(groups), length), num_pixels, dtype=torch.long)
        self.border_right = torch.full((len(groups), length), num_pixels, dtype=torch.long)
        for i, (group, shift) in enumerate(groups):
            self.border_left[i, : len(group)] = group
            self.border_right[i, : len(group)] = group + shift
        self.border_weights = torch.zeros(len(self.pair_lag), len(groups), dtype=torch.float64)
        row = column = 0
        for d, (gs, weights) in zip(self.displacements, chosen):
            self.border_weights[row : row + len(d.pairs), column : column + len(gs)] = weights
            row, column = row + len(d.pairs), column + len(gs)


def _group_by_pattern(delta, shift: int, q0: int, q1: int, pairs: list, masks: Tensor, inside: Tensor) -> _Displacement:
    """Group the range's pixels by (outside or not, column of ``masks``); pick the full-range or direct form."""
    patterns, group_of = torch.unique(torch.cat([inside[None], masks]).T, dim=0, return_inverse=True)
    is_inside, patterns = patterns[:, 0], patterns[:, 1:]  # (n_patterns,), (n_patterns, pairs)
    interior = patterns.all(dim=1)
    from_full = bool((interior[group_of]).float().mean() >= INTERIOR_FRACTION)

    def select(keep: Tensor, full: bool) -> tuple[list[Tensor], Tensor]:
        groups = [(group_of == g).nonzero().flatten() + q0 for g in keep.nonzero().flatten().tolist()]
        chosen = patterns[keep].T.double()  # (pairs, groups)
        return groups, -(1.0 - chosen) if full else chosen

    groups, weights = select(~interior if from_full else patterns.any(dim=1), from_full)
    inner_groups, inner_weights = select(is_inside & ~interior, True)
    return _Displacement(delta, shift, q0, q1, pairs, groups, weights, from_full, inner_groups, inner_weights,
                         masks.double())


@lru_cache(maxsize=256)
def _cached_plan(kernel, stride, dilation, padding, height, width, out_size) -> ConvPlan:
    return ConvPlan(kernel, stride, dilation, padding, height, width, out_size)


@lru_cache(maxsize=256)
def _cached_plan_on(geometry: tuple, device: torch.device, dtype: torch.dtype) -> ConvPlan:
    """The plan with its index tensors on ``device`` and its weights and masks in ``dtype``, converted once
    (on a GPU, converting per batch would be dozens of small host-to-device copies per layer)."""
    plan = copy.copy(_cached_plan(*geometry))
    if device == torch.device("cpu") and dtype == torch.float64:
        return plan
    index = {"device": device}
    values = {"device": device, "dtype": dtype}
    plan.tap_windows = plan.tap_windows.to(**values)
    plan.block_index, plan.mirrored, plan.mirror_index = (t.to(**index) for t in (
        plan.block_index, plan.mirrored, plan.mirror_index))
    if plan.spectral:
        plan.pair_lag, plan.border_left, plan.border_right = (t.to(**index) for t in (
            plan.pair_lag, plan.border_left, plan.border_right))
        plan.border_weights = plan.border_weights.to(**values)
    plan.displacements = [dataclasses.replace(
        d, groups=[g.to(**index) for g in d.groups], weights=d.weights.to(**values),
        inner_groups=[g.to(**index) for g in d.inner_groups], inner_weights=d.inner_weights.to(**values),
        masks=d.masks.to(**values)) for d in plan.displacements]
    return plan


def conv_plan_for(module: nn.Conv2d, x: Tensor) -> ConvPlan:
    """The (cached) plan of ``module`` for inputs of x's spatial size, on x's device and in x's dtype."""
    height, width = x.shape[-2:]
    out_size = conv_output_size(module, height, width)
    geometry = (tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation), conv_padding(module))
    return _cached_plan_on((*geometry, height, width, out_size), x.device, x.dtype)


def conv_patch_gram(module: nn.Conv2d, x: Tensor, plan: ConvPlan | None = None, form: str | None = None) -> Tensor:
    """``sum_{r,p} u_rp u_rp^T`` of the unfolded patches u (no bias column), (C kk, C kk).

    See the module docstring; exact, no patches are materialised. For 3x3 kernels there are 13
    canonical displacements instead of 81 tap pairs.

    Args:
        module: the Conv2d (its geometry).
        x: its input (R, C, H, W).
        plan: ``conv_plan_for(module, x)`` if already at hand.
        form: force ``"per_pixel"``, ``"grouped"`` or ``"spectral"`` (grouped where the plan does not
            allow it: strided convolutions, small maps); None picks as the module docstring says.
    """
    plan = conv_plan_for(module, x) if plan is None else plan
    num_rows, channels, height, width = x.shape
    kk = module.kernel_size[0] * module.kernel_size[1]
    if kk == 1 and module.stride == (1, 1) and conv_padding(module) == (0, 0):
        flat = x.transpose(0, 1).reshape(channels, -1)
        return flat @ flat.T
    blocks = x.new_zeros(kk, kk, channels, channels)
    if form is None:
        form = "per_pixel" if height * width * channels < PER_PIXEL_RATIO * num_rows else (
            "spectral" if SPECTRAL else "grouped")
    if form == "spectral" and plan.spectral:
        all_sums = [_spectral_sums(x, plan)]
    else:
        pixels = x.permute(2, 3, 0, 1).reshape(height * width, num_rows, channels).contiguous()
        sums_of = _per_pixel_sums if form == "per_pixel" else _grouped_sums
        all_sums = [sums_of(pixels, d) for d in plan.displacements]
    if all_sums:  # one scatter for all canonical pairs and one for their mirror images (few GPU launches)
        sums = (all_sums[0] if len(all_sums) == 1 else torch.cat(all_sums)).view(-1, channels, channels)
        blocks = blocks.view(kk * kk, channels, channels)
        device = sums.device
        blocks.index_copy_(0, plan.block_index.to(device), sums)
        blocks.index_copy_(0, plan.mirror_index.to(device), sums[plan.mirrored.to(device)].transpose(1, 2))
    return blocks.view(kk, kk, channels, channels).permute(2, 0, 3, 1).reshape(channels * kk, channels * kk)


def _per_pixel_sums(pixels: Tensor, d: _Displacement) -> Tensor:
    """(pairs, C C) from per-pixel products ``M[q]`` and the window masks; pixels (H W, R, C)."""
    products = torch.bmm(pixels[d.q0 : d.q1].transpose(1, 2), pixels[d.q0 + d.shift : d.q1 + d.shift])
    return d.masks.to(pixels) @ products.reshape(d.q1 - d.q0, -1)


def _grouped_sums(pixels: Tensor, d: _Displacement) -> Tensor:
    """(pairs, C C): the blocks of one displacement from its pattern groups (and the full range)."""
    channels = pixels.shape[-1]
    sums = pixels.new_zeros(len(d.pairs), channels * channels)
    if d.groups:
        group_sums = torch.stack([_pixel_sum(pixels, group, d.shift) for group in d.groups])
        sums += d.weights.to(pixels) @ group_sums.reshape(len(d.groups), -1)
    if d.from_full:
        sums += _pixel_sum(pixels, slice(d.q0, d.q1), d.shift).reshape(1, -1)
    return sums


def _spectral_sums(x: Tensor, plan: ConvPlan) -> Tensor:
    """(n_pairs, C C) in plan order: the FFT full-image sums of the displacements that use them, minus or
    plus the sums of their border groups; displacements with a small interior use their groups alone.

    All groups of all displacements are summed by one batched matmul over groups padded to equal size
    with a zero pixel, and combined by one matmul with ``plan.border_weights``: a few kernels per layer
    instead of a few per group (on a GPU, these small layers are launch-bound). The two gathered
    batches hold G L R C values each, about half the layer's input (16 groups padded to 31 pixels
    for a 3 x 3 kernel on a 32 x 32 map, against its 1024 pixels).
    """
    num_rows, channels = x.shape[:2]
    full = lag_sums(x, plan.full_lags).flatten(1) if plan.full_lags else x.new_zeros(0, channels * channels)
    sums = torch.cat([full, full.new_zeros(1, channels * channels)])[plan.pair_lag]
    if plan.border_left.shape[1]:
        flat = torch.cat([x.reshape(num_rows, channels, -1), x.new_zeros(num_rows, channels, 1)], dim=2)
        groups, length = plan.border_left.shape

        def gathered(index: Tensor) -> Tensor:  # (G, L R, C): the group's pixels of every row
            picked = flat[:, :, index.flatten()].view(num_rows, channels, groups, length)
            return picked.permute(2, 3, 0, 1).reshape(groups, length * num_rows, channels)

        group_sums = torch.bmm(gathered(plan.border_left).transpose(1, 2), gathered(plan.border_right))
        sums += plan.border_weights.to(x) @ group_sums.view(groups, -1)
    return sums


def _pixel_sum(pixels: Tensor, where: Tensor | slice, shift: int) -> Tensor:
    """``sum_{q in where} sum_r x[r, :, q] x[r, :, q + shift]^T`` as one GEMM, (C, C); pixels (H W, R, C)."""
    channels = pixels.shape[-1]
    if isinstance(where, slice):
        left, right = pixels[where], pixels[where.start + shift : where.stop + shift]
    else:
        left, right = pixels[where], pixels[where + shift]
    return left.reshape(-1, channels).T @ right.reshape(-1, channels)
