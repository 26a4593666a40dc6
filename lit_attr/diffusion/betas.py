"""Beta schedules of diffusers' ``DDPMScheduler``, computed in float64.

The formulas are diffusers' (``scheduling_ddpm.py``): ``linear`` (Ho et al.), ``scaled_linear``
(latent diffusion: linear in sqrt(beta)), ``squaredcos_cap_v2`` (Nichol & Dhariwal's cosine
``abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)``, betas capped at 0.999), ``laplace`` and
``sigmoid`` (GeoDiff). diffusers rounds them to float32; the tests compare against
``DDPMScheduler(...).betas``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from lit_attr.errors import ConfigError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")
MAX_BETA = 0.999
"""Cap of the betas derived from an ``abar`` function (diffusers' ``betas_for_alpha_bar``)."""


def _cosine_abar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_abar(s: float) -> float:
    lmb = -0.5 * math.copysign(1, 0.5 - s) * math.log(1 - 2 * math.fabs(0.5 - s) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def betas_from_abar(num_timesteps: int, abar: Callable[[float], float]) -> Tensor:
    """``beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)``, shape (T,), float64."""
    return torch.tensor([min(1 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), MAX_BETA)
                         for i in range(num_timesteps)], dtype=torch.float64)


def make_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02, beta_schedule: str = "linear",
    trained_betas: Sequence[float] | None = None,
) -> Tensor:
    """The betas (T,) in float64 of a diffusers beta schedule, or ``trained_betas`` as given."""
    if trained_betas is not None:
        betas = torch.as_tensor(list(trained_betas), dtype=torch.float64)
        if betas.shape != (num_timesteps,) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ConfigError(f"trained_betas must be {num_timesteps} values in (0, 1) (num_train_timesteps), got "
                              f"{betas.numel()} values in [{betas.min().item():.3g}, {betas.max().item():.3g}].")
        return betas
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_from_abar(num_timesteps, _cosine_abar)
    if beta_schedule == "laplace":
        return betas_from_abar(num_timesteps, _laplace_abar)
    if beta_schedule == "sigmoid":
        grid = torch.linspace(-6, 6, num_timesteps, dtype=torch.float64)
        return torch.sigmoid(grid) * (beta_end - beta_start) + beta_start
    raise ConfigError(f"beta_schedule={beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES} "
                      "or give trained_betas.")
