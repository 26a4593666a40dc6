"""``MeasurementConfig``: what ``attribute.py`` measures on each query (``--model.measurement.*``, section 3.3)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from lit_attr.errors import ConfigError
from lit_attr.measurements import TIMESTEP_PREFIX, Measurement, parse_measurement


@dataclass
class MeasurementConfig:
    """What to measure on each query (section 3.3)."""

    measurement: str = "loss"
    """loss (default), elbo, loss_at_t<t> (the per-timestep loss at 0-based t, e.g. loss_at_t100; as in evaluate.py)
    or trajectory_logprob (generated queries only)."""
    num_draws: int = 64
    """MC draws of the measurement gradient per query."""
    timestep: int | None = None
    """Deprecated: t of ``measurement: loss_at_timestep``; write ``measurement: loss_at_t<t>`` instead."""

    def __post_init__(self) -> None:
        """Check the name; the old spelling ``loss_at_timestep`` + ``timestep: t`` becomes ``loss_at_t<t>`` (a warning)."""
        try:
            kind, timestep = parse_measurement(self.measurement, self.timestep)
        except ConfigError as error:
            raise ConfigError(f"--model.measurement.measurement: {error}") from None
        if self.measurement == Measurement.LOSS_AT_TIMESTEP.value and timestep is not None:
            warnings.warn(f"--model.measurement.measurement loss_at_timestep with timestep {timestep} is deprecated; "
                          f"write --model.measurement.measurement {TIMESTEP_PREFIX}{timestep} (as in evaluate.py).",
                          FutureWarning, stacklevel=2)
            self.measurement, self.timestep = f"{TIMESTEP_PREFIX}{timestep}", None
        elif kind is Measurement.LOSS_AT_TIMESTEP and timestep is None:
            raise ConfigError("--model.measurement.measurement loss_at_timestep needs its timestep: write "
                              f"{TIMESTEP_PREFIX}<t> with a 0-based t, e.g. {TIMESTEP_PREFIX}100.")
        elif self.timestep is not None and kind is not Measurement.LOSS_AT_TIMESTEP:
            raise ConfigError(f"--model.measurement.timestep applies to the per-timestep loss only; drop it, or write "
                              f"--model.measurement.measurement {TIMESTEP_PREFIX}{self.timestep}.")
