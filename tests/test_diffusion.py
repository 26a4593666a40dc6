"""Schedule, draws, loss and sampling against closed forms and hand computations."""

import math

import pytest
import torch

from lit_attr.diffusion.draws import DrawScheme, draw_for_batch, draw_for_example
from lit_attr.diffusion.loss import expand_draws, loss_per_example
from lit_attr.diffusion.sampling import sample
from lit_attr.diffusion.schedule import DiffusionSchedule


def test_linear_schedule_matches_closed_form():
    schedule = DiffusionSchedule(1000, 1e-4, 0.02)
    betas = torch.tensor([1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)], dtype=torch.float64)
    torch.testing.assert_close(schedule.betas_f64, betas)
    expected_abar_last = math.prod(1 - b for b in betas.tolist())
    assert schedule.alphas_cumprod_f64[-1].item() == pytest.approx(expected_abar_last, rel=1e-10)
    t = 500
    expected_var = betas[t] * (1 - schedule.alphas_cumprod_f64[t - 1]) / (1 - schedule.alphas_cumprod_f64[t])
    assert schedule.posterior_variance_f64[t].item() == pytest.approx(expected_var.item(), rel=1e-12)
    assert schedule.posterior_variance_f64[0].item() == 0.0


def test_q_sample_is_eq1():
    schedule = DiffusionSchedule(100)
    x0, noise = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 99])
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(schedule.q_sample(x0, t, noise), abar.sqrt() * x0 + (1 - abar).sqrt() * noise)


def test_reverse_step_full_sampler_is_ho_et_al():
    schedule = DiffusionSchedule(1000)
    t = torch.tensor([10, 500])
    eps_coef, mean_scale, variance = schedule.reverse_step(t, t - 1)
    beta, abar = schedule.betas_f64[t], schedule.alphas_cumprod_f64[t]
    torch.testing.assert_close(eps_coef, beta / (1 - abar).sqrt())
    torch.testing.assert_close(mean_scale, 1 / (1 - beta).sqrt())
    torch.testing.assert_close(variance, schedule.posterior_variance_f64[t])
    _, _, last_variance = schedule.reverse_step(torch.tensor([0]), torch.tensor([-1]))
    assert last_variance.item() == 0.0


def test_elbo_weights_closed_form():
    schedule = DiffusionSchedule(1000)
    w = schedule.elbo_weights()
    t = 300
    beta, alpha, abar = schedule.betas_f64[t], schedule.alphas_f64[t], schedule.alphas_cumprod_f64[t]
    expected = beta**2 / (2 * schedule.posterior_variance_f64[t] * alpha * (1 - abar))
    assert w[t].item() == pytest.approx(expected.item(), rel=1e-12)
    assert w[0].item() == pytest.approx(1 / (2 * schedule.alphas_f64[0].item()), rel=1e-12)


@pytest.mark.parametrize("scheme", list(DrawScheme))
def test_draws_do_not_depend_on_batch(scheme):
    indices = torch.arange(10, 16)
    t_all, n_all = draw_for_batch(indices, 4, (1, 3, 3), 1000, seed=7, stream="train", scheme=scheme)
    t_one, n_one = draw_for_batch(indices[3:4], 4, (1, 3, 3), 1000, seed=7, stream="train", scheme=scheme)
    torch.testing.assert_close(t_all[3:4], t_one)
    torch.testing.assert_close(n_all[3:4], n_one)
    assert t_all.shape == (6, 4) and n_all.shape == (6, 4, 1, 3, 3)
    t_other, _ = draw_for_batch(indices, 4, (1, 3, 3), 1000, seed=8, stream="train", scheme=scheme)
    assert not torch.equal(t_all, t_other)


def test_shared_scheme_gives_every_example_the_same_draws():
    t, n = draw_for_batch(torch.tensor([0, 5, 9]), 3, (1, 2, 2), 1000, seed=1, stream="q", scheme="shared")
    assert torch.equal(t[0], t[2]) and torch.equal(n[1], n[2])
    t_ind, _ = draw_for_batch(torch.tensor([0, 5, 9]), 3, (1, 2, 2), 1000, seed=1, stream="q")
    assert not torch.equal(t_ind[1], t_ind[2])


@pytest.mark.parametrize("scheme", ["stratified", "shared_stratified"])
@pytest.mark.parametrize("num_draws", [8, 7, 1])
def test_stratified_antithetic_pairs_share_their_timestep(scheme, num_draws):
    t, noise = draw_for_example(3, num_draws, (1, 2, 2), 1000, seed=0, stream="s", scheme=scheme)
    pairs = (num_draws + 1) // 2
    assert t.shape == (num_draws,) and noise.shape == (num_draws, 1, 2, 2)
    assert sorted((t[::2] * pairs // 1000).tolist()) == list(range(pairs))  # one pair per stratum
    for k in range(num_draws // 2):
        assert t[2 * k] == t[2 * k + 1]  # the antithetic pair sits on ONE timestep
        torch.testing.assert_close(noise[2 * k + 1], -noise[2 * k])


def test_shared_stratified_is_shared_and_stratified():
    t, n = draw_for_batch(torch.tensor([0, 5, 9]), 4, (1, 2, 2), 1000, seed=1, stream="q", scheme="shared_stratified")
    assert torch.equal(t[0], t[2]) and torch.equal(n[1], n[2])
    assert sorted((t[0][::2] // 500).tolist()) == [0, 1]


def test_curvature_draws_are_never_shared():
    assert DrawScheme("shared").for_curvature() is DrawScheme.INDEPENDENT
    assert DrawScheme("shared_stratified").for_curvature() is DrawScheme.STRATIFIED
    assert DrawScheme("stratified").for_curvature() is DrawScheme.STRATIFIED
    assert DrawScheme("independent").for_curvature() is DrawScheme.INDEPENDENT


def _split_pairs(t, noise, generator):
    """The old, defective stratified draws: the timesteps permuted after pairing the noise."""
    return t[torch.randperm(len(t), generator=generator)], noise


def test_stratified_antithetic_draws_reduce_the_gradient_variance():
    """The per-example loss gradient's MC variance over 128 replicate draw sets (S = 8) on a tiny model.

    Stratified timesteps with antithetic pairs on the same timestep must beat i.i.d. draws, and
    beat the same draws with the pairs split across timesteps (the antithetic cancellation is
    what the pairing buys).
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 1, 3, padding=1))
    schedule = DiffusionSchedule(1000)
    x0 = torch.randn(1, 1, 4, 4)

    def eps_model(x_t, t):
        time = (t.float() / 1000).view(-1, 1, 1, 1).expand_as(x_t)
        return model(torch.cat([x_t, time], dim=1))

    def gradient(t, noise):
        model.zero_grad()
        loss_per_example(eps_model, schedule, x0, t.unsqueeze(0), noise.unsqueeze(0)).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    def total_variance(scheme, split=False):
        generator = torch.Generator().manual_seed(0)
        grads = []
        for replicate in range(128):
            t, noise = draw_for_example(replicate, 8, (1, 4, 4), 1000, seed=0, stream="v", scheme=scheme)
            if split:
                t, noise = _split_pairs(t, noise, generator)
            grads.append(gradient(t, noise))
        return torch.stack(grads).var(dim=0).sum().item()

    independent, stratified = total_variance("independent"), total_variance("stratified")
    split = total_variance("stratified", split=True)
    assert stratified < 0.85 * independent, (stratified, independent)  # measured: 0.79
    assert stratified < 0.95 * split, (stratified, split)  # measured: 0.91


def test_loss_per_example_matches_hand_computation():
    schedule = DiffusionSchedule(50)
    weight = torch.randn(1, 1, 1, 1)

    def eps_model(x_t, t):
        return weight * x_t + 0.01 * t.view(-1, 1, 1, 1).float()

    x0 = torch.randn(2, 1, 3, 3)
    t, noise = draw_for_batch(torch.tensor([0, 1]), 3, (1, 3, 3), 50, seed=0, stream="train")
    expected = torch.zeros(2)
    for b in range(2):
        for s in range(3):
            abar = schedule.alphas_cumprod[t[b, s]]
            x_t = abar.sqrt() * x0[b] + (1 - abar).sqrt() * noise[b, s]
            pred = weight[0] * x_t + 0.01 * t[b, s].float()
            expected[b] += ((pred - noise[b, s]) ** 2).mean() / 3
    torch.testing.assert_close(loss_per_example(eps_model, schedule, x0, t, noise), expected)
    rows = expand_draws(x0, t, noise)
    assert rows[0].shape == (6, 1, 3, 3) and torch.equal(rows[0][4], x0[1])


def _toy_eps_model(x_t, t):
    return 0.1 * x_t + 0.001 * t.view(-1, 1, 1, 1).float()


def test_sampling_is_deterministic_and_batch_invariant():
    schedule = DiffusionSchedule(100)
    a = sample(_toy_eps_model, schedule, 5, (1, 4, 4), seed=3, record_trajectory=True, batch_size=2)
    b = sample(_toy_eps_model, schedule, 5, (1, 4, 4), seed=3, batch_size=5)
    assert a.images.shape == (5, 1, 4, 4) and a.trajectory.shape == (101, 5, 1, 4, 4)
    torch.testing.assert_close(a.images, b.images)
    assert b.trajectory is None
    c = sample(_toy_eps_model, schedule, 5, (1, 4, 4), seed=4)
    assert not torch.allclose(a.images, c.images)
    fewer = sample(_toy_eps_model, schedule, 2, (1, 4, 4), seed=3, num_steps=10, record_trajectory=True)
    assert fewer.timesteps.tolist()[0] == 99 and fewer.timesteps.tolist()[-1] == 0
    assert fewer.trajectory.shape == (11, 2, 1, 4, 4)


def test_sampling_one_step_matches_hand_computation():
    schedule = DiffusionSchedule(10)
    res = sample(_toy_eps_model, schedule, 1, (1, 2, 2), seed=0, num_steps=2, record_trajectory=True)
    x = res.trajectory[0]
    t, t_prev = res.timesteps.tolist()
    abar, abar_prev = schedule.alphas_cumprod_f64[t], schedule.alphas_cumprod_f64[t_prev]
    beta = 1 - abar / abar_prev
    eps = _toy_eps_model(x, torch.tensor([t]))
    mean = (x - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
    residual = (res.trajectory[1] - mean.float()) / (beta * (1 - abar_prev) / (1 - abar)).sqrt().float()
    # the residual is the sampler's own seeded noise: standard normal-sized, and reproducible
    assert residual.abs().max() < 6
    again = sample(_toy_eps_model, schedule, 1, (1, 2, 2), seed=0, num_steps=2, record_trajectory=True)
    torch.testing.assert_close(again.trajectory, res.trajectory)


def test_shared_scheme_shares_across_purposes_but_not_across_draw_sets():
    args = (torch.tensor([0, 5]), 3, (1, 2, 2), 1000)
    train = draw_for_batch(*args, seed=1, stream="train", scheme="shared")
    query = draw_for_batch(*args, seed=1, stream="query", scheme="shared")
    group = draw_for_batch(*args, seed=1, stream="train/1", scheme="shared")
    assert torch.equal(train[0], query[0]) and torch.equal(train[1], query[1])
    assert not torch.equal(train[1], group[1])
    assert torch.equal(group[1][0], group[1][1])  # still shared across examples within the set
