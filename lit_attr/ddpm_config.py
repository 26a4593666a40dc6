"""Settings of ``DDPMModule``: the optimiser and its learning-rate schedule, and the diffusion process.

Plain dataclasses (``--model.optimizer.*``, ``--model.diffusion.*``), checked at construction, and stored as
dicts in checkpoints (``as_config`` turns them back).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, TypeVar

from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.errors import ConfigError
from lit_attr.validation import integer, number


@dataclass
class OptimizerConfig:
    """AdamW and learning-rate schedule settings."""

    lr: float = 2e-3
    """Peak learning rate."""
    weight_decay: float = 1e-6
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_fraction: float = 0.1
    """Fraction of the total steps spent in linear warm-up; cosine decay to 0 afterwards."""

    def __post_init__(self) -> None:
        self.lr = number(self.lr, "--model.optimizer.lr", low=0.0, low_open=True)
        self.weight_decay = number(self.weight_decay, "--model.optimizer.weight_decay", low=0.0)
        self.warmup_fraction = number(self.warmup_fraction, "--model.optimizer.warmup_fraction", 0.0, 1.0,
                                      high_open=True)
        if len(self.betas) != 2:
            raise ConfigError(f"--model.optimizer.betas must be two numbers in [0, 1), got {self.betas!r}.")
        self.betas = tuple(number(b, "--model.optimizer.betas entries", 0.0, 1.0, high_open=True) for b in self.betas)


BETA_ENDPOINT_SCHEDULES = ("linear", "scaled_linear", "sigmoid")
"""Beta schedules that go from beta_start to beta_end (the others ignore both)."""


@dataclass
class DiffusionConfig:
    """The forward process and parameterisation (Ho et al.: linear betas 1e-4..0.02, T = 1000, epsilon);
    diffusers' ``DDPMScheduler`` settings of the same names."""

    num_timesteps: int = 1000
    """T, number of diffusion steps."""
    beta_start: float = 1e-4
    """First beta."""
    beta_end: float = 0.02
    """Last beta."""
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"] = "linear"
    """How the betas go from beta_start to beta_end (diffusers' names)."""
    trained_betas: list[float] | None = None
    """Explicit betas (length num_timesteps); override beta_schedule."""
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    """What the U-Net predicts; the loss is the error of that target."""
    variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"] = "fixed_small"
    """Reverse-process variance used by the sampler, the ELBO and the trajectory measurement."""
    clip_sample: bool = False
    """The sampler clamps its x0 prediction to [-clip_sample_range, clip_sample_range]."""
    clip_sample_range: float = 1.0
    """Bound of clip_sample."""

    def __post_init__(self) -> None:
        """Refuse non-finite or out-of-range settings; beta_start/beta_end only where the schedule uses them."""
        integer(self.num_timesteps, "--model.diffusion.num_timesteps", low=2)
        self.clip_sample_range = number(self.clip_sample_range, "--model.diffusion.clip_sample_range", low=0.0,
                                        low_open=True)
        if self.trained_betas is not None or self.beta_schedule not in BETA_ENDPOINT_SCHEDULES:
            return
        self.beta_start = number(self.beta_start, "--model.diffusion.beta_start", 0.0, 1.0, low_open=True,
                                 high_open=True)
        self.beta_end = number(self.beta_end, "--model.diffusion.beta_end", 0.0, 1.0, low_open=True, high_open=True)
        if self.beta_end < self.beta_start:
            raise ConfigError(f"--model.diffusion.beta_end ({self.beta_end}) must be >= --model.diffusion.beta_start "
                              f"({self.beta_start}); the {self.beta_schedule} schedule increases.")

    def build(self) -> DiffusionSchedule:
        """The ``DiffusionSchedule`` of these settings."""
        return DiffusionSchedule(**asdict(self))


ConfigT = TypeVar("ConfigT")


def as_config(value: ConfigT | dict[str, Any] | None, cls: type[ConfigT]) -> ConfigT:
    """A config dataclass from an instance, a plain dict (as stored in checkpoints) or None (defaults)."""
    if value is None:
        return cls()
    return cls(**value) if isinstance(value, dict) else value


def warmup_cosine(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""
    warmup = max(1, int(round(warmup_fraction * total_steps)))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
