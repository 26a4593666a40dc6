"""Seeded random projections of per-example gradients (TRAK, Park et al. 2023; App. G.3).

The projection matrix P (d_proj, num_params) has i.i.d. entries N(0, 1/d_proj) (``gaussian``) or
+-1/sqrt(d_proj) (``rademacher``), so E[P^T P] = I. It is never built whole unless it fits the cache:
columns are generated in chunks of ``chunk_params`` parameters, chunk c from the generator keyed by
``(seed, c, "projection/<kind>")`` (``lit_attr.seeding``), so P depends only on (seed, kind, d_proj,
chunk_params, num_params) and ``project`` gives the same result for any batch split. With d_proj = 32768
a chunk of 1024 parameters is 128 MiB in float32; chunks are regenerated on every call when the
whole matrix exceeds ``cache_bytes``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lit_attr.errors import ConfigError
from lit_attr.seeding import generator_for

ProjectionKind = Literal["gaussian", "rademacher"]


class RandomProjector:
    """``project(g) = g @ P^T`` for gradients g of shape (B, num_params) -> (B, d_proj), float32 by default.

    Args:
        num_params: length of the flattened gradients.
        dim: d_proj.
        seed: seed of P.
        kind: ``gaussian`` or ``rademacher``.
        chunk_params: parameters (columns of P) generated at once.
        cache_bytes: keep the generated chunks when P takes at most this many bytes.
        dtype: dtype of P and of the products (float32; float16 degrades TRAK, paper Fig. 20).
    """

    def __init__(self, num_params: int, dim: int, seed: int = 0, kind: ProjectionKind = "gaussian",
                 chunk_params: int = 1024, cache_bytes: int = 4 * 2**30, dtype: torch.dtype = torch.float32) -> None:
        if num_params < 1 or dim < 1 or chunk_params < 1 or seed < 0:
            raise ConfigError(f"Need num_params, dim, chunk_params >= 1 and seed >= 0; got {num_params}, {dim}, "
                              f"{chunk_params}, {seed}.")
        if kind not in ("gaussian", "rademacher"):
            raise ConfigError(f"projection kind {kind!r} is not supported; choose gaussian or rademacher.")
        self.num_params, self.dim, self.seed, self.kind = num_params, dim, seed, kind
        self.chunk_params, self.dtype = chunk_params, dtype
        self.cache: dict[int, Tensor] | None = {} if dim * num_params * 4 <= cache_bytes else None

    @property
    def resident_bytes(self) -> int:
        """Bytes of P the projector holds: the whole matrix when cached, else one chunk at a time."""
        width = self.num_params if self.cache is not None else min(self.chunk_params, self.num_params)
        return self.dim * width * torch.empty((), dtype=self.dtype).element_size()

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_params / self.chunk_params)

    def chunk(self, index: int) -> Tensor:
        """Columns ``[index * chunk_params, ...)`` of P: (d_proj, width)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        width = min(self.chunk_params, self.num_params - index * self.chunk_params)
        generator = generator_for(self.seed, index, f"projection/{self.kind}")
        if self.kind == "gaussian":
            block = torch.randn(self.dim, width, generator=generator)
        else:
            block = torch.randint(0, 2, (self.dim, width), generator=generator).float() * 2 - 1
        block = (block / math.sqrt(self.dim)).to(self.dtype)
        if self.cache is not None:
            self.cache[index] = block
        return block

    def project(self, gradients: Tensor) -> Tensor:
        """(B, num_params) -> (B, d_proj)."""
        if gradients.dim() != 2 or gradients.shape[1] != self.num_params:
            raise ConfigError(f"Expected gradients of shape (B, {self.num_params}); got {tuple(gradients.shape)}.")
        out = torch.zeros(gradients.shape[0], self.dim, dtype=self.dtype, device=gradients.device)
        for c in range(self.num_chunks):
            cols = slice(c * self.chunk_params, (c + 1) * self.chunk_params)
            out += gradients[:, cols].to(self.dtype) @ self.chunk(c).to(gradients.device).T
        return out

    def matrix(self) -> Tensor:
        """The whole P (d_proj, num_params); only for tests and small problems."""
        return torch.cat([self.chunk(c) for c in range(self.num_chunks)], dim=1)
