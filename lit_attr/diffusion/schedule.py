"""The DDPM forward process and its posterior (Ho et al. 2020; paper section 2.1, App. G.2).

Timesteps are 0-based indices ``t in [0, T)`` as in diffusers: index ``t`` is the paper's step
``t + 1``. With ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s`` the paper's
``lambda_t`` is ``sqrt(alpha_t)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class DiffusionSchedule(torch.nn.Module):
    """Linear-beta DDPM schedule with the quantities sampling and the ELBO need.

    Args:
        num_timesteps: T, the number of diffusion steps.
        beta_start: beta of the first step.
        beta_end: beta of the last step.
    """

    def __init__(self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        super().__init__()
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
        # Same betas as diffusers' DDPMScheduler(beta_schedule="linear"), kept in float64.
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self.num_timesteps = num_timesteps
        self.beta_start, self.beta_end = beta_start, beta_end
        self._set_betas(betas)

    def _set_betas(self, betas: Tensor) -> None:
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        prev = torch.cat([torch.ones(1, dtype=betas.dtype), alphas_cumprod[:-1]])
        # "Small" variance of Ho et al. section 3.2 (App. G.2): beta_t (1 - abar_{t-1}) / (1 - abar_t).
        posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
        for name, value in {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": prev,
            "posterior_variance": posterior_variance,
        }.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)
            self.register_buffer(name + "_f64", value, persistent=False)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` (paper eq. 1): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0: clean images, shape (B, C, H, W).
            t: timestep indices, shape (B,).
            noise: standard normal noise, shape (B, C, H, W).

        Returns:
            Noised images, shape (B, C, H, W).
        """
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def reverse_step(self, t: Tensor, t_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of the ancestral step ``x_t -> x_{t_prev}`` (section 2.1, App. G.2).

        With ``a = abar_t``, ``a' = abar_{t_prev}`` (1 when ``t_prev == -1``, i.e. the step to x0),
        ``beta = 1 - a / a'``: ``mu = (x_t - beta / sqrt(1 - a) eps) / sqrt(1 - beta)`` and the
        "small" variance ``sigma^2 = beta (1 - a') / (1 - a)``. With ``t_prev = t - 1`` this is
        the 1000-step DDPM sampler; other pairs give the respaced sampler (Nichol & Dhariwal 2021).

        Args:
            t: current timestep indices, shape (B,).
            t_prev: next (smaller) timestep indices or -1, shape (B,).

        Returns:
            ``(eps_coef, mean_scale, variance)``, each float64 of shape (B,), such that
            ``mu = mean_scale * (x_t - eps_coef * eps)``.
        """
        abar = self.alphas_cumprod_f64.to(t.device)
        a = abar[t]
        a_prev = torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], torch.ones_like(a))
        beta = 1.0 - a / a_prev
        variance = beta * (1.0 - a_prev) / (1.0 - a)
        return beta / (1.0 - a).sqrt(), 1.0 / (1.0 - beta).sqrt(), variance

    def elbo_weights(self) -> Tensor:
        """Per-timestep weights ``w_t`` of the ELBO in terms of the pixel-sum epsilon error.

        Ho et al. eq. (5) with the eps-parameterisation: ``L_{t-1} = w_t ||eps - eps_theta||^2 + c``
        with ``w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))`` and the small variance
        sigma_t^2. For the first step, whose small variance is 0, sigma^2 = beta is used (the
        decoder term). Returns shape (T,), float64.
        """
        variance = self.posterior_variance_f64.clone()
        variance[0] = self.betas_f64[0]
        return self.betas_f64**2 / (2.0 * variance * self.alphas_f64 * (1.0 - self.alphas_cumprod_f64))

    def sampling_timesteps(self, num_steps: int | None = None) -> Tensor:
        """Descending timesteps of a sampler: all T of them, or ``num_steps`` evenly spaced.

        Returns shape (num_steps,), starting at T-1 and ending at 0.
        """
        num_steps = self.num_timesteps if num_steps is None else num_steps
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_sampling_steps must be in [1, {self.num_timesteps}], got {num_steps}.")
        return torch.linspace(self.num_timesteps - 1, 0, num_steps).round().long().unique_consecutive()
