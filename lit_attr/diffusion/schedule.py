"""The DDPM forward process, its posterior and the model parameterisations (Ho et al. 2020; paper
section 2.1, App. G.2).

Timesteps are 0-based indices ``t in [0, T)`` as in diffusers: index ``t`` is the paper's step
``t + 1``. With ``alpha_t = 1 - beta_t`` and ``alpha_bar_t = prod_{s<=t} alpha_s`` the paper's
``lambda_t`` is ``sqrt(alpha_t)``.

The settings mirror diffusers' ``DDPMScheduler`` so that a pipeline folder is used as saved:
``beta_schedule`` (or explicit ``trained_betas``), ``prediction_type`` (what the network outputs:
``epsilon``, ``v_prediction`` with ``v = sqrt(abar) eps - sqrt(1 - abar) x0``, or ``sample`` = x0),
``variance_type`` of the reverse process (``fixed_small``: the posterior variance, ``fixed_large``:
beta) and ``clip_sample`` (the sampler clamps its x0 prediction to +-``clip_sample_range``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_attr.diffusion.betas import BETA_SCHEDULES, make_betas
from lit_attr.errors import ConfigError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log")
"""Fixed reverse variances; the ``_log`` variants are the same variances stored as logs in diffusers."""


def check_schedule_settings(prediction_type: str, variance_type: str, beta_schedule: str) -> None:
    """Refuse parameterisations lit-attr does not implement, naming the setting."""
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}.")
    if variance_type in ("learned", "learned_range"):
        raise ConfigError(f"variance_type={variance_type!r} (a U-Net that also predicts its variance) is not supported: "
                          "the loss, ELBO and sampler of lit-attr use fixed variances (fixed_small or fixed_large).")
    if variance_type not in VARIANCE_TYPES:
        raise ConfigError(f"variance_type={variance_type!r} is not supported; choose one of {VARIANCE_TYPES}.")
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"beta_schedule={beta_schedule!r} is not supported; choose one of {BETA_SCHEDULES} "
                          "or give trained_betas.")


class DiffusionSchedule(torch.nn.Module):
    """A DDPM schedule with the quantities training, sampling and the ELBO need.

    Args:
        num_timesteps: T, the number of diffusion steps.
        beta_start: beta of the first step (linear, scaled_linear, sigmoid).
        beta_end: beta of the last step (linear, scaled_linear, sigmoid).
        beta_schedule: one of ``BETA_SCHEDULES`` (diffusers' names).
        trained_betas: explicit betas (length T); override ``beta_schedule``.
        prediction_type: what the network predicts: epsilon, v_prediction or sample.
        variance_type: reverse-process variance: fixed_small (Ho et al.'s posterior variance) or fixed_large (beta).
        clip_sample: the sampler clamps its prediction of x0 to [-clip_sample_range, clip_sample_range].
        clip_sample_range: the clamp bound.
    """

    def __init__(
        self,
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        prediction_type: str = "epsilon",
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
    ) -> None:
        super().__init__()
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}.")
        check_schedule_settings(prediction_type, variance_type, beta_schedule if trained_betas is None else "linear")
        if clip_sample and clip_sample_range <= 0:
            raise ConfigError(f"clip_sample_range must be positive, got {clip_sample_range}.")
        self.num_timesteps = num_timesteps
        self.beta_start, self.beta_end, self.beta_schedule = beta_start, beta_end, beta_schedule
        self.prediction_type, self.variance_type = prediction_type, variance_type
        self.clip_sample, self.clip_sample_range = bool(clip_sample), float(clip_sample_range)
        self.large_variance = variance_type.startswith("fixed_large")
        self._set_betas(make_betas(num_timesteps, beta_start, beta_end, beta_schedule, trained_betas))

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

    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar_t`` per row, shaped (B, 1, ..., 1) to broadcast against ``like`` and in its dtype."""
        return self.alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample ``x_t ~ q(x_t | x_0)`` (paper eq. 1): ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``.

        Args:
            x0: clean images, shape (B, C, H, W).
            t: timestep indices, shape (B,).
            noise: standard normal noise, shape (B, C, H, W).

        Returns:
            Noised images, shape (B, C, H, W).
        """
        abar = self._abar(t, x0)
        return abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network is trained to output (eq. 2 for epsilon): eps, ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
        (v_prediction), or x0 (sample). Shapes (B, C, H, W); t (B,)."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "sample":
            return x0
        abar = self._abar(t, x0)
        return abar.sqrt() * noise - (1.0 - abar).sqrt() * x0

    def eps_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The noise prediction implied by a network output: ``eps = sqrt(abar) v + sqrt(1 - abar) x_t`` for v,
        ``(x_t - sqrt(abar) x0) / sqrt(1 - abar)`` for sample. Shapes (B, C, H, W); t (B,)."""
        if self.prediction_type == "epsilon":
            return output
        abar = self._abar(t, x_t)
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * output + (1.0 - abar).sqrt() * x_t
        return (x_t - abar.sqrt() * output) / (1.0 - abar).sqrt()

    def x0_from_output(self, output: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The x0 prediction implied by a network output (diffusers' ``pred_original_sample``)."""
        if self.prediction_type == "sample":
            return output
        abar = self._abar(t, x_t)
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * x_t - (1.0 - abar).sqrt() * output
        return (x_t - (1.0 - abar).sqrt() * output) / abar.sqrt()

    def target_to_eps_factor(self) -> Tensor:
        """``||eps - eps_hat||^2 = c_t ||target - output||^2`` with c_t = 1 (epsilon), abar_t (v), abar_t / (1 - abar_t)
        (sample); shape (T,), float64."""
        abar = self.alphas_cumprod_f64
        if self.prediction_type == "v_prediction":
            return abar.clone()
        if self.prediction_type == "sample":
            return abar / (1.0 - abar)
        return torch.ones_like(abar)

    def reverse_step(self, t: Tensor, t_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of the ancestral step ``x_t -> x_{t_prev}`` (section 2.1, App. G.2).

        With ``a = abar_t``, ``a' = abar_{t_prev}`` (1 when ``t_prev == -1``, i.e. the step to x0),
        ``beta = 1 - a / a'``: ``mu = (x_t - beta / sqrt(1 - a) eps) / sqrt(1 - beta)`` and the
        variance ``sigma^2 = beta (1 - a') / (1 - a)`` ("small", the default) or ``beta`` ("large").
        With ``t_prev = t - 1`` this is the T-step DDPM sampler; other pairs give the respaced sampler
        (Nichol & Dhariwal 2021), as diffusers' ``DDPMScheduler.step``.

        Args:
            t: current timestep indices, shape (B,).
            t_prev: next (smaller) timestep indices or -1, shape (B,).

        Returns:
            ``(eps_coef, mean_scale, variance)``, each float64 of shape (B,), such that
            ``mu = mean_scale * (x_t - eps_coef * eps)``.
        """
        a, a_prev = self._abar_pair(t, t_prev)
        beta = 1.0 - a / a_prev
        variance = beta if self.large_variance else beta * (1.0 - a_prev) / (1.0 - a)
        return beta / (1.0 - a).sqrt(), 1.0 / (1.0 - beta).sqrt(), variance

    def _abar_pair(self, t: Tensor, t_prev: Tensor) -> tuple[Tensor, Tensor]:
        abar = self.alphas_cumprod_f64.to(t.device)
        t_prev = t_prev.to(t.device)
        a_prev = torch.where(t_prev >= 0, abar[t_prev.clamp(min=0)], torch.ones_like(abar[t]))
        return abar[t], a_prev

    def reverse_mean(self, output: Tensor, x_t: Tensor, t: Tensor, t_prev: Tensor) -> Tensor:
        """``mu_theta(x_t)`` of the step ``t -> t_prev`` from a network output (Ho et al. eq. 7, 11).

        Without clipping: ``mean_scale (x_t - eps_coef eps_hat)`` (``reverse_step``). With
        ``clip_sample``: diffusers' form ``sqrt(a') beta / (1 - a) x0_hat + sqrt(1 - beta) (1 - a') / (1 - a) x_t``
        with ``x0_hat`` clamped to +-``clip_sample_range``. Shapes (B, C, H, W); t, t_prev (B,).
        """
        shape = (-1, *([1] * (x_t.dim() - 1)))
        if not self.clip_sample:
            eps_coef, mean_scale, _ = (v.to(x_t.device, x_t.dtype).view(shape) for v in self.reverse_step(t, t_prev))
            return mean_scale * (x_t - eps_coef * self.eps_from_output(output, x_t, t))
        x0_hat = self.x0_from_output(output, x_t, t).clamp(-self.clip_sample_range, self.clip_sample_range)
        a, a_prev = self._abar_pair(t, t_prev)
        beta = 1.0 - a / a_prev
        x0_coef = (a_prev.sqrt() * beta / (1.0 - a)).to(x_t.device, x_t.dtype).view(shape)
        xt_coef = ((1.0 - beta).sqrt() * (1.0 - a_prev) / (1.0 - a)).to(x_t.device, x_t.dtype).view(shape)
        return x0_coef * x0_hat + xt_coef * x_t

    def elbo_weights(self) -> Tensor:
        """Per-timestep weights ``w_t`` of the ELBO in terms of the pixel-sum error of the network output.

        Ho et al. eq. (5): ``L_{t-1} = ||mu~ - mu_theta||^2 / (2 sigma_t^2) + c = w_t ||eps - eps_hat||^2 + c``
        with ``w_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))``, sigma_t^2 the reverse variance
        (small or large). For the first step, whose small variance is 0, sigma^2 = beta is used (the
        decoder term). Multiplied by ``target_to_eps_factor`` so that it applies to
        ``||target - output||^2`` of any parameterisation. Returns shape (T,), float64.
        """
        variance = self.betas_f64.clone() if self.large_variance else self.posterior_variance_f64.clone()
        variance[0] = self.betas_f64[0]
        weights = self.betas_f64**2 / (2.0 * variance * self.alphas_f64 * (1.0 - self.alphas_cumprod_f64))
        return weights * self.target_to_eps_factor()

    def elbo_terms(self, mse: Tensor, t: Tensor, num_pixels: int) -> Tensor:
        """Per-draw ELBO terms ``T w_t D mse``: one draw's unbiased estimate of the negative ELBO.

        Ho et al. eq. (5) without parameter-free constants, ``sum_t L_{t-1} = T E_t[w_t ||eps - eps_hat||^2]``
        with ``w_t`` from ``elbo_weights``; ``mse`` is the pixel mean of the squared error, so ``D mse`` is the
        pixel sum.

        Args:
            mse: per-draw pixel-mean squared errors of any shape.
            t: the draws' timesteps, the same shape as ``mse``.
            num_pixels: D, pixels per image (C * H * W).

        Returns:
            Terms of ``mse``'s shape, device and dtype.
        """
        weights = self.elbo_weights().to(mse.device)[t.to(mse.device)].to(mse.dtype)
        return mse * num_pixels * weights * self.num_timesteps

    def sampling_timesteps(self, num_steps: int | None = None) -> Tensor:
        """Descending timesteps of a sampler: all T of them, or ``num_steps`` evenly spaced.

        Returns shape (num_steps,), starting at T-1 and ending at 0.
        """
        num_steps = self.num_timesteps if num_steps is None else num_steps
        if not 1 <= num_steps <= self.num_timesteps:
            raise ValueError(f"num_sampling_steps must be in [1, {self.num_timesteps}], got {num_steps}.")
        return torch.linspace(self.num_timesteps - 1, 0, num_steps).round().long().unique_consecutive()


__all__ = ["BETA_SCHEDULES", "PREDICTION_TYPES", "VARIANCE_TYPES", "DiffusionSchedule", "check_schedule_settings",
           "make_betas"]
