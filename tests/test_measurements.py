"""Measurements against hand computations."""

import pytest
import torch

from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import loss_per_example
from lit_attr.diffusion.sampling import sample
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError
from lit_attr.measurements import Measurement, MeasurementSpec, measurement_rows


def eps_model(x_t, t):
    return 0.3 * x_t + 0.002 * t.view(-1, 1, 1, 1).float()


SCHEDULE = DiffusionSchedule(50)
IMAGES = torch.randn(3, 1, 2, 2)
INDICES = torch.tensor([0, 1, 2])


def test_loss_rows_sum_to_per_example_loss():
    spec = MeasurementSpec("loss", num_draws=4, seed=5)
    rows = measurement_rows(spec, eps_model, SCHEDULE, IMAGES, INDICES)
    t, noise = draw_for_batch(INDICES, 4, (1, 2, 2), 50, 5, "query")
    torch.testing.assert_close(rows.view(3, 4).sum(1), loss_per_example(eps_model, SCHEDULE, IMAGES, t, noise))


def test_elbo_rows_hand_computed():
    spec = MeasurementSpec("elbo", num_draws=2, seed=1)
    rows = measurement_rows(spec, eps_model, SCHEDULE, IMAGES, INDICES)
    t, noise = draw_for_batch(INDICES, 2, (1, 2, 2), 50, 1, "query")
    w = SCHEDULE.elbo_weights()
    b, s = 2, 1
    abar = SCHEDULE.alphas_cumprod[t[b, s]]
    x_t = abar.sqrt() * IMAGES[b] + (1 - abar).sqrt() * noise[b, s]
    sq_sum = ((eps_model(x_t[None], t[b, s].view(1))[0] - noise[b, s]) ** 2).sum()
    expected = 50 * w[t[b, s]].float() * sq_sum / 2
    assert rows[b * 2 + s].item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_at_timestep_uses_that_timestep():
    spec = MeasurementSpec("loss_at_timestep", num_draws=3, timestep=7)
    rows = measurement_rows(spec, eps_model, SCHEDULE, IMAGES, INDICES)
    _, noise = draw_for_batch(INDICES, 3, (1, 2, 2), 50, 0, "query")
    t = torch.full((3, 3), 7)
    torch.testing.assert_close(rows.view(3, 3).sum(1), loss_per_example(eps_model, SCHEDULE, IMAGES, t, noise))


def test_trajectory_logprob_hand_computed():
    res = sample(eps_model, SCHEDULE, 2, (1, 2, 2), seed=0, num_steps=3, record_trajectory=True)
    spec = MeasurementSpec("trajectory_logprob", num_draws=6, seed=2)
    rows = measurement_rows(spec, eps_model, SCHEDULE, res.images, torch.arange(2), res.trajectory, res.timesteps)
    timesteps = res.timesteps.tolist()
    per_step = torch.zeros(2, 3)
    for k, t in enumerate(timesteps):
        t_prev = timesteps[k + 1] if k + 1 < 3 else -1
        eps_coef, scale, var = SCHEDULE.reverse_step(torch.tensor([t]), torch.tensor([t_prev]))
        var = var if var.item() > 0 else SCHEDULE.betas_f64[t].view(1)
        x = res.trajectory[k]
        mean = scale.float() * (x - eps_coef.float() * eps_model(x, torch.full((2,), t)))
        per_step[:, k] = ((res.trajectory[k + 1] - mean) ** 2).flatten(1).sum(1) / (2 * var.float())
    # every row equals (K / S) times the term of one of the trajectory's steps
    rows = rows.view(2, 6) * 6 / 3
    for q in range(2):
        for value in rows[q]:
            assert torch.isclose(per_step[q], value, rtol=1e-4).any()


def test_trajectory_logprob_without_trajectory_is_a_clear_error():
    with pytest.raises(ConfigError, match="trajectories"):
        measurement_rows(MeasurementSpec("trajectory_logprob"), eps_model, SCHEDULE, IMAGES, INDICES)


def test_bad_measurement_names_the_choices():
    with pytest.raises(ConfigError, match="elbow.*choose one of loss, elbo"):
        MeasurementSpec("elbow")
    with pytest.raises(ConfigError, match="timestep"):
        MeasurementSpec(Measurement.LOSS_AT_TIMESTEP)
