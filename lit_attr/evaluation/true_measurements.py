"""The "true" measurements m(theta, x_q) of a model on the benchmark queries (section 4, eq. 13).

Every model of a benchmark is measured with the *same* draws (common random numbers): query q's
S draws of (timestep, noise) are two independent halves of S/2 draws, half h from
``(seed, q, stream "true_measurement/h")`` with stratified timesteps and antithetic noise, whatever
the model. Differences between models are then free of
most of the Monte Carlo noise, which is what the LDS ranks.

The loss (eq. 2) and the ELBO (Ho et al. eq. 5, ``DiffusionSchedule.elbo_terms``)
are two weightings of the same per-draw errors, so they share one forward pass:

    loss_q = (1/S) sum_s ||eps_s - eps_theta(x_{t_s}, t_s)||^2 / D
    elbo_q = (T/S) sum_s w_{t_s} ||eps_s - eps_theta(x_{t_s}, t_s)||^2

The per-timestep loss ``loss_at_t<t>`` (l_t of eq. 2, for the measurement-substitution table across
timesteps, Fig. 11) reuses the same noise draws with every timestep set to t (one extra forward pass)::

    l_t,q = (1/S) sum_s ||eps_s - eps_theta(x_t(eps_s), t)||^2 / D

Each value is also returned for the two independent halves, from which the benchmark reports how
much Monte Carlo noise is left in the measurement itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.draws import DrawScheme, draw_for_batch
from lit_attr.diffusion.loss import expand_draws, loss_per_draw, unet_eps_model
from lit_attr.errors import ConfigError
from lit_attr.measurements import Measurement, check_timestep, parse_measurement

STREAM = "true_measurement"
SUPPORTED = (Measurement.LOSS, Measurement.ELBO, Measurement.LOSS_AT_TIMESTEP)


def check_true_measurements(measurements: Sequence[str]) -> None:
    """Refuse names that cannot be a benchmark target (supported: loss, elbo, loss_at_t<t>)."""
    for name in measurements:
        kind, timestep = parse_measurement(name)
        if kind not in SUPPORTED or (kind is Measurement.LOSS_AT_TIMESTEP and timestep is None):
            raise ConfigError(f"True measurements support loss, elbo and loss_at_t<t> (e.g. loss_at_t100); "
                              f"got {name!r}.")


@torch.no_grad()
def measure_queries(
    ddpm: DDPMModule,
    images: Tensor,
    measurements: Sequence[str],
    num_draws: int,
    seed: int,
    rows_per_batch: int = 8192,
) -> Tensor:
    """True measurements of the attribution weights (EMA) of ``ddpm`` on ``images``.

    Args:
        ddpm: the model.
        images: queries (Q, C, H, W) in [-1, 1]; query q's draws are seeded by its position q.
        measurements: names among ``loss``, ``elbo`` and ``loss_at_t<t>``.
        num_draws: S, draws per query (even).
        seed: seed of the draws (the same for every model of a benchmark).
        rows_per_batch: forward-pass rows per chunk.

    Returns:
        float64 (3, len(measurements), Q): all S draws, first half, second half.
    """
    check_true_measurements(measurements)
    parsed = [parse_measurement(m) for m in measurements]
    fixed = sorted({timestep for _, timestep in parsed if timestep is not None})  # the per-timestep losses' t
    for timestep in fixed:
        check_timestep(timestep, ddpm.schedule.num_timesteps)
    if num_draws < 2 or num_draws % 2:
        raise ConfigError(f"measurements.num_draws must be an even number >= 2, got {num_draws}.")
    unet = ddpm.attribution_unet
    was_training = unet.training
    unet.eval()
    schedule, pixels = ddpm.schedule, images[0].numel()
    queries_per_chunk = max(1, rows_per_batch // num_draws)
    half = num_draws // 2
    eps_model = unet_eps_model(unet)

    def errors(idx: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        x0, t_flat, eps = expand_draws(images[idx].to(ddpm.device), t, noise)
        mse = loss_per_draw(eps_model, schedule, x0, t_flat.to(ddpm.device), eps.to(ddpm.device))
        return mse.double().cpu().view(len(idx), half)

    halves = []  # per half: (len(measurements), Q)
    for h in range(2):
        sums = {key: [] for key in parsed}
        for start in range(0, len(images), queries_per_chunk):
            idx = torch.arange(start, min(start + queries_per_chunk, len(images)))
            t, noise = draw_for_batch(idx, half, tuple(images.shape[1:]), schedule.num_timesteps, seed,
                                      f"{STREAM}/{h}", DrawScheme.STRATIFIED)
            per_draw = {}
            if any(timestep is None for _, timestep in parsed):
                mse = errors(idx, t, noise)
                per_draw[(Measurement.LOSS, None)] = mse
                per_draw[(Measurement.ELBO, None)] = schedule.elbo_terms(mse, t, pixels)
            for timestep in fixed:  # the same noise, every draw at timestep t
                per_draw[(Measurement.LOSS_AT_TIMESTEP, timestep)] = errors(idx, torch.full_like(t, timestep), noise)
            for key in parsed:
                sums[key].append(per_draw[key].mean(1))
        halves.append(torch.stack([torch.cat(sums[key]) for key in parsed]))
    unet.train(was_training)
    out = torch.stack([(halves[0] + halves[1]) / 2, halves[0], halves[1]])
    return out
