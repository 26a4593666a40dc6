"""The DDPM loss (paper eq. 2), per draw and averaged per example.

Convention used everywhere in lit-attr: one draw's loss is the *pixel mean* of the squared error,
``l(theta, x, t, eps) = ||eps - eps_theta(x_t, t)||^2 / D`` with ``D = C H W``, and an example's
loss is the mean over its S draws. A model with another ``prediction_type`` is trained on, and
measured with, the same error of its own target (``DiffusionSchedule.training_target``: v or x0)
instead of eps. Class-conditional models get each example's label with all of its rows. The
training loss (eq. 3) is the mean over examples, and the damping of the influence functions is in
the units of the GGN of that mean loss (App. G.4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError

EpsModel = Callable[..., Tensor]
"""``eps_model(x_t, t[, labels]) -> output``: noisy images (B, C, H, W), timesteps (B,) and, for a
class-conditional model, labels (B,) to the network output (B, C, H, W): the predicted noise, or v
or x0 for other ``prediction_type``s."""


def call_model(eps_model: EpsModel, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
    """``eps_model(x_t, t)``, with the class labels when there are any."""
    return eps_model(x_t, t) if labels is None else eps_model(x_t, t, labels.to(x_t.device))


def expand_labels(labels: Tensor | None, num_draws: int) -> Tensor | None:
    """Per-example labels (B,) repeated for the example-major rows of ``expand_draws``: (B S,)."""
    return None if labels is None else labels.repeat_interleave(num_draws)


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
    eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """Pixel-mean squared error of each row (eq. 2 for one draw): ``||target - output||^2 / D``.

    Args:
        eps_model: the network.
        schedule: the forward process and the parameterisation (target = eps, v or x0).
        x0: images (R, C, H, W); timesteps (R,); noise (R, C, H, W); labels (R,) or None.

    Returns:
        Losses of shape (R,).
    """
    timesteps, noise = timesteps.to(x0.device), noise.to(x0.device)
    x_t = schedule.q_sample(x0, timesteps, noise)
    output = call_model(eps_model, x_t, timesteps, labels)
    return (output - schedule.training_target(x0, noise, timesteps)).pow(2).flatten(1).mean(dim=1)


def loss_per_example(
    eps_model: EpsModel, schedule: DiffusionSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """Per-example loss averaged over its S draws (eq. 2 with the MC average of App. G.3).

    Args:
        x0: images (B, C, H, W); timesteps (B, S); noise (B, S, C, H, W); labels (B,) or None.

    Returns:
        Losses of shape (B,).
    """
    batch, num_draws = timesteps.shape
    rows = loss_per_draw(eps_model, schedule, *expand_draws(x0, timesteps, noise), expand_labels(labels, num_draws))
    return rows.view(batch, num_draws).mean(dim=1)


def unet_eps_model(unet: torch.nn.Module) -> EpsModel:
    """Adapt a diffusers ``UNet2DModel`` to ``eps_model(x_t, t[, labels])``.

    A class-conditional U-Net (``num_class_embeds``) gets the labels as its ``class_labels`` and
    refuses to run without them; an unconditional one ignores labels (datasets such as CIFAR carry them).
    """
    conditional = getattr(unet, "class_embedding", None) is not None
    num_classes = getattr(getattr(unet, "config", None), "num_class_embeds", None)

    def eps_model(x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if not conditional:
            return unet(x_t, t).sample
        if labels is None:
            raise ConfigError(f"The U-Net is class-conditional (num_class_embeds={num_classes}) but no class labels were "
                              "given: use a dataset whose items carry labels, and --model.queries.labels for queries.")
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ConfigError(f"Class labels {sorted(set(labels.tolist()))[:10]} are outside the U-Net's classes "
                              f"0..{num_classes - 1}: set --model.unet.num_class_embeds to the number of classes.")
        return unet(x_t, t, class_labels=labels).sample

    return eps_model
