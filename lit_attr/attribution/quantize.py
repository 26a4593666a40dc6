"""Compression of the (preconditioned) query gradients by quantisation (paper section 3.2, App. C).

The paper stores query gradients in int8 (App. G.3): each row is scaled by its own absmax,
``scale = max|x| / 127``, ``q = round(x / scale)`` in [-127, 127], so ``|x - q scale| <= scale / 2``
entrywise. Scores against training gradients fold the scale in after the matmul:
``(train @ q^T) * scale``, i.e. the queries are never dequantised as a whole. Converting a layer's int8 columns
to float32 costs a pass over them per scoring batch; ``with_float_copy`` keeps one float32 copy of the stored
values (not of the scaled rows: the scores stay bit-identical) when the run can afford it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

import torch
from torch import Tensor

from lit_attr.errors import NumericalError

INT8_MAX = 127


class QueryCompression(str, Enum):
    """How query gradients are stored."""

    INT8 = "int8"
    FP16 = "fp16"
    NONE = "none"


QueryCompressionName = Literal["int8", "fp16", "none"]
"""``QueryCompression``'s values, for signatures read by the CLIs."""


@dataclass
class CompressedRows:
    """Compressed rows of a (Q, D) matrix.

    Attributes:
        values: (Q, D) int8, float16 or float32.
        scales: (Q,) float32 per-row scales (int8 only), else None.
        mode: the compression.
        float_values: None, or ``values`` converted to float32 once (``with_float_copy``), read by
            ``unscaled_columns`` instead of converting the columns again for every batch.
    """

    values: Tensor
    scales: Tensor | None
    mode: QueryCompression
    float_values: Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        """(Q, D)."""
        return self.values.shape


def compress(x: Tensor, mode: QueryCompression | str = QueryCompression.INT8) -> CompressedRows:
    """Compress rows of ``x`` (Q, D); int8 uses a symmetric per-row absmax scale (0 rows stay 0).

    Raises:
        NumericalError: ``x`` holds NaN/Inf (int8 rounding would silently turn NaN into 0).
    """
    mode = QueryCompression(mode)
    if x.dim() != 2:
        raise ValueError(f"compress expects a (Q, D) matrix, got shape {tuple(x.shape)}.")
    bad_rows = (~torch.isfinite(x)).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise NumericalError(f"query compression: rows {bad_rows[:5]} hold NaN/Inf and cannot be compressed; the "
                             "preconditioned query gradients are not finite (see the check of the stage before).")
    if mode is QueryCompression.NONE:
        return CompressedRows(x.float(), None, mode)
    if mode is QueryCompression.FP16:
        return CompressedRows(x.half(), None, mode)
    absmax = x.detach().abs().amax(dim=1).float()
    scales = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    values = torch.round(x.float() / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return CompressedRows(values, scales, mode)


def concat_compressed(parts: list[CompressedRows]) -> CompressedRows:
    """Rows of several ``CompressedRows`` (same mode) stacked: compressing blocks of rows equals compressing all."""
    scales = None if parts[0].scales is None else torch.cat([p.scales for p in parts])
    return CompressedRows(torch.cat([p.values for p in parts]), scales, parts[0].mode)


def float_copy_bytes(num_queries: int, num_params: int, mode: QueryCompression | str) -> int:
    """Bytes of the float32 copy ``with_float_copy`` would keep of a (Q, D) store (0 for ``none``: already float32)."""
    return 0 if QueryCompression(mode) is QueryCompression.NONE else num_queries * num_params * 4


def with_float_copy(compressed: CompressedRows, max_bytes: int) -> CompressedRows:
    """``compressed`` with a float32 copy of its stored values beside them when the copy takes at most
    ``max_bytes`` (else unchanged). Scores do not change (int8 and fp16 convert to float32 exactly); each
    scoring batch then skips converting the (Q, D) store, which on a CPU costs about 70% of the score matmul
    itself for 1000 queries (``benchmarks/bench_queries.py``)."""
    size = float_copy_bytes(*compressed.shape, compressed.mode)
    if size == 0 or size > max_bytes or compressed.float_values is not None:
        return compressed
    return CompressedRows(compressed.values, compressed.scales, compressed.mode, compressed.values.float())


def decompress(compressed: CompressedRows) -> Tensor:
    """float32 (Q, D) approximation of the original rows."""
    values = compressed.values.float()
    return values * compressed.scales[:, None] if compressed.scales is not None else values


def score_against(compressed: CompressedRows, train_grads: Tensor, chunk_size: int = 2**16) -> Tensor:
    """Inner products of training gradients with the compressed queries: (B, Q).

    Args:
        compressed: Q compressed query rows of dimension D.
        train_grads: (B, D) training gradients (any float dtype; computed in float32).
        chunk_size: columns of D converted at once (bounds the float32 copy of the queries).

    Returns:
        ``train_grads @ decompress(compressed)^T`` of shape (num_train, num_queries) = (B, Q).
    """
    if train_grads.shape[1] != compressed.shape[1]:
        raise ValueError(f"train_grads has D={train_grads.shape[1]}, the queries D={compressed.shape[1]}.")
    return apply_scales(compressed, unscaled_block_scores(compressed, train_grads, 0, chunk_size))


def unscaled_block_scores(compressed: CompressedRows, block: Tensor, start: int, chunk_size: int = 2**16) -> Tensor:
    """``block @ values[:, start : start + d]^T`` in float32, without the int8 scales: (B, Q).

    Scores are sums of such products over the column blocks of D (e.g. one per layer; see
    ``lit_attr.attribution.gradients.per_example_scores``); ``apply_scales`` finishes them.

    Args:
        compressed: Q compressed query rows of dimension D.
        block: (B, d) training-gradient columns ``start ... start + d - 1`` (any float dtype).
        start: first column of the block in D.
        chunk_size: columns converted to float32 at once.
    """
    if start < 0 or start + block.shape[1] > compressed.shape[1]:
        raise ValueError(f"Columns {start}..{start + block.shape[1]} are outside the queries' D={compressed.shape[1]}.")
    train = block.float()
    scores = train.new_zeros(train.shape[0], compressed.shape[0])
    with torch.autocast(device_type=train.device.type, enabled=False):  # float32 under bf16-mixed
        for offset in range(0, train.shape[1], chunk_size):
            stop = min(offset + chunk_size, train.shape[1])
            scores.addmm_(train[:, offset:stop], unscaled_columns(compressed, start + offset, stop - offset).T)
    return scores


def unscaled_columns(compressed: CompressedRows, start: int, size: int) -> Tensor:
    """Columns ``start ... start + size - 1`` of the stored rows in float32, without the int8 scales: (Q, size)."""
    if compressed.float_values is not None:
        return compressed.float_values[:, start : start + size]
    return compressed.values[:, start : start + size].float()


def apply_scales(compressed: CompressedRows, scores: Tensor) -> Tensor:
    """Multiply (B, Q) unscaled scores by the per-query int8 scales (no-op for fp16/none)."""
    return scores * compressed.scales.to(scores)[None] if compressed.scales is not None else scores
