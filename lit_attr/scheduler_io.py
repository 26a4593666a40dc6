"""Between diffusers scheduler configs and lit-attr's ``DiffusionConfig``.

A pipeline folder's ``scheduler/scheduler_config.json`` decides the forward process and the
sampler: its betas (``beta_schedule`` with ``beta_start``/``beta_end``, or ``trained_betas``),
``num_train_timesteps``, ``prediction_type``, ``variance_type`` and ``clip_sample``. Missing keys
take the defaults of the scheduler class named in the file (diffusers' own ``from_config``).
Settings lit-attr does not implement are refused with the key named, never ignored:
``thresholding``, ``rescale_betas_zero_snr``, learned variances, other scheduler families.
``timestep_spacing`` and ``steps_offset`` only place the steps of diffusers' own few-step sampler;
lit-attr's sampler spaces its steps evenly (``DiffusionSchedule.sampling_timesteps``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers

from lit_attr.ddpm_config import DiffusionConfig
from lit_attr.diffusion.schedule import check_schedule_settings
from lit_attr.errors import ConfigError

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
"""Schedulers of the discrete DDPM forward process whose configs lit-attr reads."""
REFUSED_FLAGS = {
    "thresholding": "dynamic thresholding of the x0 prediction",
    "rescale_betas_zero_snr": "zero-terminal-SNR betas (abar_T = 0)",
}


def diffusion_config_from_scheduler(raw: dict[str, Any], where: str | Path = "scheduler") -> DiffusionConfig:
    """The ``DiffusionConfig`` of a scheduler config dict (as in ``scheduler_config.json``).

    Raises:
        ConfigError: an unsupported scheduler class or setting, naming it.
    """
    name = raw.get("_class_name", "DDPMScheduler")
    if name not in SCHEDULER_CLASSES:
        raise ConfigError(f"{where}: scheduler {name!r} is not supported; lit-attr reads {' or '.join(SCHEDULER_CLASSES)} "
                          "configs (the discrete DDPM forward process).")
    try:
        config = dict(getattr(diffusers, name).from_config(raw).config)
    except (NotImplementedError, ValueError, TypeError) as error:
        raise ConfigError(f"{where}: diffusers cannot build {name} from this config ({error}).") from None
    for flag, what in REFUSED_FLAGS.items():
        if config.get(flag):
            raise ConfigError(f"{where}: {flag}=true ({what}) is not supported by lit-attr's loss and sampler; "
                              "use a model trained without it.")
    beta_schedule = config.get("beta_schedule", "linear")
    trained = config.get("trained_betas")
    prediction_type = config.get("prediction_type", "epsilon")
    variance_type = config.get("variance_type", "fixed_small")
    try:
        check_schedule_settings(prediction_type, variance_type, "linear" if trained is not None else beta_schedule)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
    try:  # DiffusionConfig refuses out-of-range values with the training flag's name: name the file's key instead
        return DiffusionConfig(
            num_timesteps=int(config["num_train_timesteps"]), beta_start=float(config["beta_start"]),
            beta_end=float(config["beta_end"]), beta_schedule=beta_schedule,
            trained_betas=None if trained is None else [float(b) for b in trained], prediction_type=prediction_type,
            variance_type=variance_type, clip_sample=bool(config.get("clip_sample", False)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        )
    except ConfigError as error:
        message = str(error).replace("--model.diffusion.num_timesteps", "num_train_timesteps")
        message = message.replace("--model.diffusion.", "")
        raise ConfigError(f"{where}: unsupported scheduler setting: {message}") from None


def scheduler_kwargs(config: DiffusionConfig) -> dict[str, Any]:
    """``DDPMScheduler`` arguments with exactly the settings of ``config`` (incl. ``clip_sample``, default off here)."""
    return {
        "num_train_timesteps": config.num_timesteps, "beta_start": config.beta_start, "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule, "trained_betas": config.trained_betas,
        "prediction_type": config.prediction_type, "variance_type": config.variance_type,
        "clip_sample": config.clip_sample, "clip_sample_range": config.clip_sample_range,
    }
