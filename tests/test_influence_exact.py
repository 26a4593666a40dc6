"""Influence equals the exact first-order response of the optimum on a quadratic problem (eq. 4-6).

An epsilon model that is linear in its parameters, ``eps_theta(x_t) = W x_t + b``, makes the
DDPM loss with fixed draws a quadratic in theta. Its optimum, with some examples down-weighted by
epsilon (eq. 4), is a weighted least-squares solution in closed form, so
``d m(theta*(eps)) / d eps`` can be computed exactly and compared with the sum of the pipeline's
influence scores: per-example gradients, type-2 K-FAC (exact for one linear layer), eigenbasis
preconditioning and the measurement gradient.
"""

import torch
from torch import nn

from lit_attr.attribution.gradients import flatten_gradients, per_example_gradients, per_example_loss_gradients
from lit_attr.curvature.eigen import eigendecompose_factors, precondition
from lit_attr.curvature.kfac import KFACAccumulator
from lit_attr.curvature.layers import select_kfac_modules
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import expand_draws
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.measurements import MeasurementSpec, measurement_rows

SHAPE, NUM_TRAIN, NUM_DRAWS, T = (1, 2, 2), 7, 3, 100


class LinearEps(nn.Module):
    """eps_theta(x_t, t) = W vec(x_t) + b: linear in the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4, dtype=torch.float64)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.linear(x_t.flatten(1)).view_as(x_t)


def design(schedule, images, indices, stream):
    """Rows of features [x_t, 1] and targets eps for fixed draws: (R, 5), (R, 4)."""
    t, noise = draw_for_batch(indices, NUM_DRAWS, SHAPE, T, seed=3, stream=stream)
    x0, t, eps = expand_draws(images, t, noise.double())
    x_t = schedule.q_sample(x0, t, eps).flatten(1)
    return torch.cat([x_t, torch.ones(len(x_t), 1, dtype=x_t.dtype)], dim=1), eps.flatten(1)


def weighted_optimum(features, targets, row_weights):
    """argmin sum_r w_r ||target_r - theta feature_r||^2 as theta of shape (4, 5) = [W | b]."""
    gram = features.T @ (row_weights[:, None] * features)
    return torch.linalg.solve(gram, features.T @ (row_weights[:, None] * targets)).T


def test_influence_equals_exact_response_of_the_optimum():
    torch.manual_seed(0)
    schedule = DiffusionSchedule(T)
    images = torch.randn(NUM_TRAIN, *SHAPE, dtype=torch.float64)
    indices = torch.arange(NUM_TRAIN)
    features, targets = design(schedule, images, indices, "train")
    removed = [1, 4, 5]

    def optimum(epsilon):  # eq. 4: (1/N) sum_n l_n - epsilon sum_{j in I} l_j, per-row weight / S
        weights = torch.full((NUM_TRAIN,), 1.0 / NUM_TRAIN, dtype=torch.float64)
        weights[removed] -= epsilon
        return weighted_optimum(features, targets, weights.repeat_interleave(NUM_DRAWS) / NUM_DRAWS)

    model = LinearEps()
    with torch.no_grad():
        theta = optimum(0.0)
        model.linear.weight.copy_(theta[:, :4])
        model.linear.bias.copy_(theta[:, 4])
    modules = select_kfac_modules(model)
    query = torch.randn(1, *SHAPE, dtype=torch.float64)
    spec = MeasurementSpec("loss", num_draws=5, seed=1)

    def measurement(theta_value):
        with torch.no_grad():
            model.linear.weight.copy_(theta_value[:, :4])
            model.linear.bias.copy_(theta_value[:, 4])
            value = measurement_rows(spec, model, schedule, query, torch.tensor([0])).sum()
        return value

    epsilon = 1e-5
    exact = (measurement(optimum(epsilon)) - measurement(optimum(-epsilon))) / (2 * epsilon)
    measurement(theta)  # back to the optimum

    t, noise = draw_for_batch(indices, NUM_DRAWS, SHAPE, T, seed=3, stream="train")
    accumulator = KFACAccumulator(modules, fisher_type="type-2", model=model)  # the loss's own rows
    accumulator.update_ddpm(model, schedule, images, t, noise.double(), indices)
    factors = accumulator.finalize()
    train_grads = flatten_gradients(per_example_loss_gradients(model, schedule, modules, images, t, noise.double(), model))
    query_grads = per_example_gradients(
        model, modules, lambda: measurement_rows(spec, model, schedule, query.clone(), torch.tensor([0])), 1, 5
    )
    hessian = exact_hessian(features)
    eigen = eigendecompose_factors(factors, dtype=torch.float64)
    preconditioned = flatten_gradients(precondition(query_grads, eigen, damping=0.0))
    scores = train_grads @ preconditioned.T
    dense = flatten_gradients(query_grads) @ torch.linalg.solve(hessian, train_grads.T)
    torch.testing.assert_close(scores[:, 0], dense[0], rtol=1e-6, atol=1e-10)
    predicted = scores[removed, 0].sum()
    torch.testing.assert_close(predicted, exact, rtol=1e-5, atol=1e-10)
    assert exact.abs() > 1e-3  # a real effect, not 0 == 0


def exact_hessian(features):
    """Hessian of the mean loss (1/R) sum_r ||eps_r - theta z_r||^2 / D in the row-major [W | b] layout."""
    dim = 4
    gram = features.T @ features / features.shape[0]
    return torch.kron(torch.eye(dim, dtype=gram.dtype), gram) * 2.0 / dim
