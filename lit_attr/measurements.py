"""Measurements m(theta, x) of a query x (paper section 3.3), as sums of per-row terms.

Every measurement is "loss-like" (larger means the query is *less* probable), so one sign
convention holds for all scores: a positive influence score means removing the training example
is predicted to increase the measurement. Each function returns per-row terms of shape
(Q * S,), example-major, whose sum over a query's S rows is the MC estimate of its measurement;
``per_example_gradients`` differentiates exactly that.

- ``loss``: the training loss (eq. 2) with S draws of (t, noise).
- ``elbo``: the negative ELBO of Ho et al. eq. (5) without parameter-free constants:
  ``sum_t w_t ||eps - eps_theta||^2`` estimated with S uniform timesteps, ``T w_t`` per draw.
- ``loss_at_timestep``: the per-timestep loss l_t (eq. 2) at a fixed t, S noise draws; the name
  ``loss_at_t<t>`` (e.g. ``loss_at_t100``) names it with its 0-based timestep in one string.
- ``trajectory_logprob``: ``-log p(x_{0:T})`` of the recorded sampling trajectory, up to
  constants: ``sum_k ||x_{k+1} - mu_theta(x_k, t_k)||^2 / (2 sigma_k^2)``, estimated with S
  uniformly drawn steps k (``K / S`` per draw). A zero-variance final step uses sigma^2 = beta.
  mu_theta and sigma are the sampler's (the schedule's parameterisation, variance and clipping).

Class-conditional models are measured at each query's label (``labels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import EpsModel, call_model, expand_draws, expand_labels, loss_per_draw
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError
from lit_attr.seeding import generator_for


class Measurement(str, Enum):
    """What is measured on a query (section 3.3)."""

    LOSS = "loss"
    ELBO = "elbo"
    LOSS_AT_TIMESTEP = "loss_at_timestep"
    TRAJECTORY_LOGPROB = "trajectory_logprob"


TIMESTEP_PREFIX = "loss_at_t"
"""Prefix of the one-string name ``loss_at_t<t>`` of the per-timestep loss l_t (0-based t)."""


def is_timestep_measurement(name: str) -> bool:
    """Whether ``name`` is a per-timestep loss (``loss_at_t<t>``; shown in the substitution table, not the
    benchmark comparison)."""
    return name.startswith(TIMESTEP_PREFIX)


def parse_measurement(name: str, timestep: int | None = None) -> tuple[Measurement, int | None]:
    """(kind, timestep) of a measurement name.

    Accepts ``loss``, ``elbo``, ``trajectory_logprob``, ``loss_at_timestep`` (with ``timestep``) and
    ``loss_at_t<t>`` (the per-timestep loss at 0-based t, e.g. ``loss_at_t100``).
    """
    name = str(getattr(name, "value", name))
    if name.startswith(TIMESTEP_PREFIX) and name != Measurement.LOSS_AT_TIMESTEP.value:
        digits = name[len(TIMESTEP_PREFIX):]
        if not digits.isdigit():
            raise ConfigError(f"measurement {name!r}: write the per-timestep loss as loss_at_t<t> with a 0-based "
                              "integer t, e.g. loss_at_t100.")
        return Measurement.LOSS_AT_TIMESTEP, int(digits)
    try:
        kind = Measurement(name)
    except ValueError:
        choices = ", ".join([m.value for m in Measurement] + [f"{TIMESTEP_PREFIX}<t>"])
        raise ConfigError(f"measurement={name!r} is not supported; choose one of {choices}.") from None
    return kind, (timestep if kind is Measurement.LOSS_AT_TIMESTEP else None)


def check_timestep(timestep: int, num_timesteps: int) -> None:
    """Refuse a per-timestep loss outside the schedule's 0..T-1."""
    if not 0 <= timestep < num_timesteps:
        raise ConfigError(f"loss_at_timestep t={timestep} is outside the model's timesteps 0..{num_timesteps - 1}.")


@dataclass
class MeasurementSpec:
    """A measurement and its MC settings.

    Attributes:
        measurement: which measurement.
        num_draws: S, MC draws per query.
        seed: seed of the draws.
        scheme: draw scheme (see ``lit_attr.diffusion.draws``).
        timestep: t for ``loss_at_timestep`` (0-based).
        stream: seeding stream of the draws.
    """

    measurement: Measurement | str = Measurement.LOSS
    num_draws: int = 64
    seed: int = 0
    scheme: DrawScheme | str = DrawScheme.INDEPENDENT
    timestep: int | None = None
    stream: str = "query"

    def __post_init__(self) -> None:
        self.measurement, self.timestep = parse_measurement(self.measurement, self.timestep)
        self.scheme = DrawScheme(self.scheme)
        if self.num_draws < 1:
            raise ConfigError(f"the measurement's num_draws (--model.measurement.num_draws) must be >= 1, got "
                              f"{self.num_draws}.")
        if self.measurement is Measurement.LOSS_AT_TIMESTEP and self.timestep is None:
            raise ConfigError("measurement=loss_at_timestep needs a timestep: set --model.measurement.timestep (0..T-1).")


def measurement_rows(
    spec: MeasurementSpec,
    eps_model: EpsModel,
    schedule: DiffusionSchedule,
    images: Tensor,
    indices: Tensor,
    trajectories: Tensor | None = None,
    trajectory_timesteps: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    """Per-row terms of the measurement for a batch of queries.

    Args:
        spec: measurement settings.
        eps_model: the noise predictor.
        schedule: the diffusion schedule.
        images: queries x_0, shape (Q, C, H, W).
        indices: query indices used for seeding, shape (Q,).
        trajectories: recorded states (K + 1, Q, C, H, W) for ``trajectory_logprob``.
        trajectory_timesteps: the sampler's timesteps (K,) for ``trajectory_logprob``.
        labels: class labels (Q,) of the queries (class-conditional models): measured at these labels.

    Returns:
        Terms of shape (Q * S,); the sum over the S rows of query q is its measurement.
    """
    if spec.measurement is Measurement.TRAJECTORY_LOGPROB:
        if trajectories is None or trajectory_timesteps is None:
            raise ConfigError(
                "measurement=trajectory_logprob needs recorded sampling trajectories: generate the queries "
                "with the model (not from a folder of images)."
            )
        return _trajectory_rows(spec, eps_model, schedule, trajectories, trajectory_timesteps, indices, labels)
    timesteps, noise = draw_for_batch(indices, spec.num_draws, tuple(images.shape[1:]), schedule.num_timesteps,
                                      spec.seed, spec.stream, spec.scheme)
    if spec.measurement is Measurement.LOSS_AT_TIMESTEP:
        check_timestep(int(spec.timestep), schedule.num_timesteps)
        timesteps = torch.full_like(timesteps, int(spec.timestep))
    x0, t, eps = expand_draws(images, timesteps, noise)
    mse = loss_per_draw(eps_model, schedule, x0, t, eps, expand_labels(labels, spec.num_draws))
    if spec.measurement is Measurement.ELBO:
        return schedule.elbo_terms(mse, t, images[0].numel()) / spec.num_draws
    return mse / spec.num_draws


def _trajectory_rows(
    spec: MeasurementSpec,
    eps_model: EpsModel,
    schedule: DiffusionSchedule,
    trajectories: Tensor,
    timesteps: Tensor,
    indices: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """``-log p`` terms of S uniformly drawn transitions per query trajectory (section 3.3 item 2)."""
    num_steps = timesteps.shape[0]
    steps = torch.stack([
        torch.randint(0, num_steps, (spec.num_draws,), generator=generator_for(spec.seed, int(i), spec.stream + "/steps"))
        for i in indices.tolist()
    ])  # (Q, S)
    query = torch.arange(len(indices)).unsqueeze(1).expand_as(steps)
    x_t = trajectories[steps, query].flatten(0, 1)
    x_next = trajectories[steps + 1, query].flatten(0, 1)
    t = timesteps[steps].flatten()
    previous = torch.cat([timesteps[1:], torch.tensor([-1])])[steps].flatten()
    t, previous = t.to(x_t.device), previous.to(x_t.device)
    _, _, variance = schedule.reverse_step(t, previous)
    variance = torch.where(variance > 0, variance, schedule.betas_f64.to(x_t.device)[t])
    output = call_model(eps_model, x_t, t, expand_labels(labels, spec.num_draws))
    mean = schedule.reverse_mean(output, x_t, t, previous)
    sq = (x_next - mean).pow(2).flatten(1).sum(dim=1)
    return sq / (2.0 * variance.to(sq.dtype)) * num_steps / spec.num_draws
