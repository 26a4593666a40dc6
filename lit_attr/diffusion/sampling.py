"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2; paper App. G.2) with the schedule's reverse
variance ("small" by default), parameterisation and x0 clipping (as diffusers' ``DDPMScheduler.step``).

Sample ``i`` draws its initial noise and all per-step noise from ``generator_for(seed, i,
"sampling")``, so a sample does not depend on the batch it was generated in. Optionally the
whole trajectory ``x_T, ..., x_0`` is recorded (needed by the trajectory log-prob measurement).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lit_attr.diffusion.loss import EpsModel, call_model
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.seeding import generator_for


@dataclass
class SamplingResult:
    """Output of ``sample``.

    Attributes:
        images: final samples x_0, shape (Q, C, H, W), clamped to [-1, 1] (unless ``clamp=False``: latents).
        timesteps: the sampler's descending timesteps, shape (K,).
        trajectory: ``x_{t_1}, ..., x_{t_K}, x_0`` (unclamped) of shape (K + 1, Q, C, H, W) if recorded.
        labels: the class labels (Q,) of a class-conditional model, else None.
    """

    images: Tensor
    timesteps: Tensor
    trajectory: Tensor | None = None
    labels: Tensor | None = None


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    schedule: DiffusionSchedule,
    num_samples: int,
    image_shape: tuple[int, int, int],
    seed: int = 0,
    num_steps: int | None = None,
    record_trajectory: bool = False,
    batch_size: int = 256,
    first_index: int = 0,
    device: torch.device | str = "cpu",
    labels: Tensor | None = None,
    clamp: bool = True,
) -> SamplingResult:
    """Generate ``num_samples`` images by ancestral sampling.

    Args:
        eps_model: noise predictor ``eps_model(x_t, t)``.
        schedule: the diffusion schedule.
        num_samples: Q.
        image_shape: (C, H, W).
        seed: sampling seed; sample i uses ``generator_for(seed, first_index + i, "sampling")``.
        num_steps: sampler steps (None: all T; fewer: the respaced sampler).
        record_trajectory: keep every intermediate state.
        batch_size: samples denoised together.
        first_index: index of the first sample (to extend a set of samples reproducibly).
        device: device of the model.
        labels: class labels (num_samples,) of a class-conditional model.
        clamp: clamp the final samples to [-1, 1] (images; not latents).

    Returns:
        A ``SamplingResult``.
    """
    timesteps = schedule.sampling_timesteps(num_steps)
    chunks = []
    for start in range(0, num_samples, batch_size):
        indices = range(first_index + start, first_index + min(start + batch_size, num_samples))
        chunk_labels = None if labels is None else labels[start:start + len(indices)].to(device)
        chunks.append(_sample_chunk(eps_model, schedule, indices, image_shape, seed, timesteps, record_trajectory, device,
                                    chunk_labels))
    trajectory = torch.cat(chunks, dim=1)
    images = trajectory[-1].clamp(-1.0, 1.0) if clamp else trajectory[-1]
    return SamplingResult(images=images, timesteps=timesteps, trajectory=trajectory if record_trajectory else None,
                          labels=None if labels is None else labels.cpu())


def _sample_chunk(
    eps_model: EpsModel,
    schedule: DiffusionSchedule,
    indices: range,
    image_shape: tuple[int, int, int],
    seed: int,
    timesteps: Tensor,
    record_trajectory: bool,
    device: torch.device | str,
    labels: Tensor | None = None,
) -> Tensor:
    """Denoise one chunk; returns states (K + 1, B, C, H, W), or (1, B, C, H, W) with only x_0."""
    generators = [generator_for(seed, i, "sampling") for i in indices]
    x = torch.stack([torch.randn(image_shape, generator=g) for g in generators]).to(device)
    states = [x.cpu()] if record_trajectory else []
    previous = torch.cat([timesteps[1:], torch.tensor([-1])])
    for t, t_prev in zip(timesteps.tolist(), previous.tolist()):
        t_batch = torch.full((len(indices),), t, dtype=torch.long, device=device)
        t_prev_batch = torch.full_like(t_batch, t_prev)
        eps_coef, mean_scale, variance = schedule.reverse_step(t_batch[:1], t_prev_batch[:1])
        output = call_model(eps_model, x, t_batch, labels)
        if schedule.clip_sample:
            x = schedule.reverse_mean(output, x, t_batch, t_prev_batch)
        else:
            x = float(mean_scale) * (x - float(eps_coef) * schedule.eps_from_output(output, x, t_batch))
        if t_prev >= 0:
            noise = torch.stack([torch.randn(image_shape, generator=g) for g in generators]).to(device)
            x = x + float(variance.sqrt()) * noise
        if record_trajectory:
            states.append(x.cpu())
    return torch.stack(states) if record_trajectory else x.cpu().unsqueeze(0)
