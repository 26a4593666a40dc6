"""Seeded Monte Carlo draws of (timestep, noise) per example (paper App. G.3).

Each example's S draws depend only on ``(seed, example_index, stream)`` (see ``lit_attr.seeding``),
never on the batch it sits in. A scheme is two independent choices:

- *who shares the draws*: every example its own draws (``independent``, ``stratified``), or every
  example and every query the very same S draws (``shared``, ``shared_stratified``): common random
  numbers across examples, which cancels the common-mode part of the MC error when scores of
  different examples are added or compared (the LDS sums scores over subsets);
- *how the S draws are made*: i.i.d. uniform timesteps and Gaussian noise (``independent``,
  ``shared``), or stratified + antithetic (``stratified``, ``shared_stratified``): the S draws form
  ceil(S/2) pairs ``(t_k, eps_k), (t_k, -eps_k)`` with one timestep per stratum
  ``[k T / K, (k+1) T / K)``, K = ceil(S/2). Both members of a pair sit at the *same* timestep, so the
  terms of the loss (and of its gradient) that are odd in the noise cancel within the pair.

The curvature (K-FAC factors) is an expectation over the data and must see many timesteps whatever
the gradients use: ``DrawScheme.for_curvature`` maps a shared scheme to its per-example twin.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

import torch
from torch import Tensor

from lit_attr.seeding import generator_for


class DrawScheme(str, Enum):
    """How the S (timestep, noise) draws of an example are made (see the module docstring)."""

    INDEPENDENT = "independent"
    STRATIFIED = "stratified"
    SHARED = "shared"
    SHARED_STRATIFIED = "shared_stratified"

    @property
    def is_shared(self) -> bool:
        """Every example (and query) gets the same draws."""
        return self in (DrawScheme.SHARED, DrawScheme.SHARED_STRATIFIED)

    @property
    def is_stratified(self) -> bool:
        """Stratified timesteps with antithetic noise pairs on the same timestep."""
        return self in (DrawScheme.STRATIFIED, DrawScheme.SHARED_STRATIFIED)

    def for_curvature(self) -> DrawScheme:
        """The per-example scheme with the same sampling: curvature draws are never shared."""
        return DrawScheme.STRATIFIED if self.is_stratified else DrawScheme.INDEPENDENT


DrawSchemeName = Literal["independent", "stratified", "shared", "shared_stratified"]
"""``DrawScheme``'s values, for signatures read by the CLIs (jsonargparse parses an ``Enum`` by member name)."""
CurvatureDrawSchemeName = Literal["independent", "stratified"]
"""The per-example ``DrawScheme`` values: the schemes curvature draws may use (``DrawScheme.for_curvature``)."""


SHARED_KEY = 0
"""Example index whose generator every example uses under a shared scheme."""
SHARED_STREAM = "shared"
"""Stream of the shared schemes: training examples and queries get the very same draws."""


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
        example_index: stable dataset index of the example (ignored by the shared schemes).
        num_draws: S, the number of (timestep, noise) pairs.
        sample_shape: shape of one image, (C, H, W).
        num_timesteps: T; timesteps are drawn from [0, T).
        seed: the user's seed.
        stream: purpose of the draws (e.g. ``"train"``, ``"query"``, ``"curvature"``). Under
            the shared schemes every purpose uses the same S draws; only a draw-set suffix ``"/<k>"`` (the
            independent draw groups of ``lit_attr.evaluation.variants``, e.g. ``"train/3"``) selects
            another shared set.
        scheme: a ``DrawScheme``.

    Returns:
        ``(timesteps, noise)`` of shapes (S,) long and (S, C, H, W) float32.
    """
    scheme = DrawScheme(scheme)
    if scheme.is_shared:
        draw_set = stream[stream.index("/"):] if "/" in stream else ""
        generator = generator_for(seed, SHARED_KEY, SHARED_STREAM + draw_set)
    else:
        generator = generator_for(seed, int(example_index), stream)
    if scheme.is_stratified:
        return _stratified_antithetic(num_draws, sample_shape, num_timesteps, generator)
    timesteps = torch.randint(0, num_timesteps, (num_draws,), generator=generator)
    noise = torch.randn((num_draws, *sample_shape), generator=generator)
    return timesteps, noise


def _stratified_antithetic(
    num_draws: int, sample_shape: tuple[int, ...], num_timesteps: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """K = ceil(S/2) antithetic pairs, pair k at one timestep of stratum ``[k T / K, (k+1) T / K)``.

    Returns draws ordered ``(t_0, eps_0), (t_0, -eps_0), (t_1, eps_1), ...`` (an odd S drops the last
    ``-eps``): timesteps (S,) long and noise (S, *sample_shape).
    """
    num_pairs = (num_draws + 1) // 2
    offsets = torch.rand(num_pairs, generator=generator, dtype=torch.float64)
    strata = (torch.arange(num_pairs, dtype=torch.float64) + offsets) * num_timesteps / num_pairs
    pair_timesteps = strata.floor().long().clamp(max=num_timesteps - 1)
    half = torch.randn((num_pairs, *sample_shape), generator=generator)
    timesteps = pair_timesteps.repeat_interleave(2)[:num_draws]
    noise = torch.stack([half, -half], dim=1).flatten(0, 1)[:num_draws]
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


def draws_from_keys(keys: Tensor, sample_shape: tuple[int, ...], num_timesteps: int) -> tuple[Tensor, Tensor]:
    """One training draw per example from its own key (``--data.example_keyed``): timesteps (B,) uniform on
    ``0..T-1`` and noise (B, *sample_shape) standard normal, each example's from a generator seeded with its key."""
    timesteps, noise = [], []
    for key in keys.tolist():
        generator = torch.Generator().manual_seed(int(key))
        timesteps.append(torch.randint(0, num_timesteps, (), generator=generator))
        noise.append(torch.randn(sample_shape, generator=generator))
    return torch.stack(timesteps), torch.stack(noise)
