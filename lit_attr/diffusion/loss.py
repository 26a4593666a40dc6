"""The DDPM epsilon-prediction loss (paper eq. 2), per draw and averaged per example.

Convention used everywhere in lit-attr: one draw's loss is the *pixel mean* of the squared error,
``l(theta, x, t, eps) = ||eps - eps_theta(x_t, t)||^2 / D`` with ``D = C H W``, and an example's
loss is the mean over its S draws. The training loss (eq. 3) is the mean over examples, and the
damping of the influence functions is in the units of the GGN of that mean loss (App. G.4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_attr.diffusion.schedule import DiffusionSchedule

EpsModel = Callable[[Tensor, Tensor], Tensor]
"""``eps_model(x_t, t) -> eps_hat``: noisy images (B, C, H, W) and timesteps (B,) to predicted noise."""


def expand_draws(x0: Tensor, timesteps: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten per-example draws into rows.

    Args:
        x0: images (B, C, H, W).
        timesteps: (B, S).
        noise: (B, S, C, H, W).

    Returns:
        ``(x0_rows, t_rows, noise_rows)`` of shapes (B S, C, H, W), (B S,), (B S, C, H, W),
        example-major (row ``b S + s`` is draw s of example b).
    """
    batch, num_draws = timesteps.shape
    x0_rows = x0.unsqueeze(1).expand(batch, num_draws, *x0.shape[1:]).reshape(-1, *x0.shape[1:])
    return x0_rows, timesteps.reshape(-1), noise.reshape(-1, *noise.shape[2:]).to(x0.dtype)


def loss_per_draw(
    eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor
) -> Tensor:
    """Pixel-mean squared epsilon error of each row (eq. 2 for one draw).

    Args:
        eps_model: the noise predictor.
        schedule: the forward process.
        x0: images (R, C, H, W); timesteps (R,); noise (R, C, H, W).

    Returns:
        Losses of shape (R,).
    """
    x_t = schedule.q_sample(x0, timesteps.to(x0.device), noise.to(x0.device))
    eps_hat = eps_model(x_t, timesteps.to(x0.device))
    return (eps_hat - noise.to(x0.device)).pow(2).flatten(1).mean(dim=1)


def loss_per_example(
    eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor
) -> Tensor:
    """Per-example loss averaged over its S draws (eq. 2 with the MC average of App. G.3).

    Args:
        x0: images (B, C, H, W); timesteps (B, S); noise (B, S, C, H, W).

    Returns:
        Losses of shape (B,).
    """
    batch, num_draws = timesteps.shape
    rows = loss_per_draw(eps_model, schedule, *expand_draws(x0, timesteps, noise))
    return rows.view(batch, num_draws).mean(dim=1)


def unet_eps_model(unet: torch.nn.Module) -> EpsModel:
    """Adapt a diffusers ``UNet2DModel`` to the ``eps_model(x_t, t)`` signature."""

    def eps_model(x_t: Tensor, t: Tensor) -> Tensor:
        return unet(x_t, t).sample

    return eps_model
