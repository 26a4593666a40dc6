"""Seeded Monte Carlo draws of (timestep, noise) per example (paper App. G.3).

Each example's S draws depend only on ``(seed, example_index, stream)`` (see ``lit_attr.seeding``),
never on the batch it sits in. Three schemes:

- ``independent`` (the paper's): every example draws its own S pairs from its own generator;
- ``shared``: every example (and every query) uses the same S pairs, i.e. common random numbers
  across examples, which cancels the common-mode part of the MC error in comparisons;
- ``stratified``: per-example generator, timesteps stratified over [0, T) (one per stratum, in a
  random order) and the noise drawn as antithetic pairs ``(eps, -eps)``.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from lit_attr.seeding import generator_for


class DrawScheme(str, Enum):
    """How the S (timestep, noise) draws of an example are made."""

    INDEPENDENT = "independent"
    SHARED = "shared"
    STRATIFIED = "stratified"


SHARED_KEY = 0
"""Example index whose generator every example uses under ``DrawScheme.SHARED``."""
SHARED_STREAM = "shared"
"""Stream of ``DrawScheme.SHARED``: training examples and queries get the very same draws."""


def draw_for_example(
    example_index: int,
    num_draws: int,
    sample_shape: tuple[int, ...],
    num_timesteps: int,
    seed: int,
    stream: str,
    scheme: DrawScheme | str = DrawScheme.INDEPENDENT,
) -> tuple[Tensor, Tensor]:
    """The S draws of one example.

    Args:
        example_index: stable dataset index of the example (ignored under ``shared``).
        num_draws: S, the number of (timestep, noise) pairs.
        sample_shape: shape of one image, (C, H, W).
        num_timesteps: T; timesteps are drawn from [0, T).
        seed: the user's seed.
        stream: purpose of the draws (e.g. ``"train"``, ``"query"``, ``"curvature"``). Under
            ``shared`` every purpose uses the same S draws; only a draw-set suffix ``"/<k>"`` (the
            independent draw groups of ``lit_attr.evaluation.variants``, e.g. ``"train/3"``) selects
            another shared set.
        scheme: a ``DrawScheme``.

    Returns:
        ``(timesteps, noise)`` of shapes (S,) long and (S, C, H, W) float32.
    """
    scheme = DrawScheme(scheme)
    if scheme is DrawScheme.SHARED:
        draw_set = stream[stream.index("/"):] if "/" in stream else ""
        generator = generator_for(seed, SHARED_KEY, SHARED_STREAM + draw_set)
    else:
        generator = generator_for(seed, int(example_index), stream)
    if scheme is DrawScheme.STRATIFIED:
        return _stratified_antithetic(num_draws, sample_shape, num_timesteps, generator)
    timesteps = torch.randint(0, num_timesteps, (num_draws,), generator=generator)
    noise = torch.randn((num_draws, *sample_shape), generator=generator)
    return timesteps, noise


def _stratified_antithetic(
    num_draws: int, sample_shape: tuple[int, ...], num_timesteps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """One timestep per stratum ``[s T / S, (s+1) T / S)`` in random order; noise as (eps, -eps) pairs."""
    offsets = torch.rand(num_draws, generator=generator, dtype=torch.float64)
    strata = (torch.arange(num_draws, dtype=torch.float64) + offsets) * num_timesteps / num_draws
    timesteps = strata.floor().long().clamp(max=num_timesteps - 1)
    timesteps = timesteps[torch.randperm(num_draws, generator=generator)]
    half = torch.randn(((num_draws + 1) // 2, *sample_shape), generator=generator)
    noise = torch.cat([half, -half])[:num_draws]
    return timesteps, noise


def draw_for_batch(
    example_indices: Tensor,
    num_draws: int,
    sample_shape: tuple[int, ...],
    num_timesteps: int,
    seed: int,
    stream: str,
    scheme: DrawScheme | str = DrawScheme.INDEPENDENT,
) -> tuple[Tensor, Tensor]:
    """Draws for a batch: timesteps (B, S) and noise (B, S, C, H, W), one example at a time."""
    pairs = [
        draw_for_example(int(i), num_draws, sample_shape, num_timesteps, seed, stream, scheme)
        for i in example_indices.tolist()
    ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
