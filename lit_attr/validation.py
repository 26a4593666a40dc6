"""Checks of user-given numbers and of tensors computed from them (NaN/Inf guards).

``number`` validates one hyperparameter at construction (so ``--model.optimizer.lr nan`` is refused
before any work, naming the flag); ``check_finite`` stops a run at the first NaN/Inf, naming the
stage, the first offending layer and the likely cause.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from lit_attr.errors import ConfigError, NumericalError


def number(value: object, flag: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within ``[low, high]`` (open ends with ``low_open``/``high_open``).

    Raises:
        ConfigError: not a number (e.g. a string from a dict-typed config), NaN/Inf, or out of range;
            the message names ``flag`` and the accepted range.
    """
    interval = _interval(low, high, low_open, high_open)
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{flag} must be a number {interval}, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(result):
        raise ConfigError(f"{flag} must be a finite number {interval}, got {value!r}.")
    below = low is not None and (result <= low if low_open else result < low)
    above = high is not None and (result >= high if high_open else result > high)
    if below or above:
        raise ConfigError(f"{flag} must be {interval}, got {value!r}.")
    return result


def integer(value: object, flag: str, low: int | None = None) -> int:
    """``value`` as an int ``>= low``; refuses floats with a fraction, bools and strings."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{flag} must be an integer{'' if low is None else f' >= {low}'}, got {value!r}.")
    if low is not None and value < low:
        raise ConfigError(f"{flag} must be >= {low}, got {value}.")
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return "(any finite value)"
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """Name of the first tensor (in mapping order) holding a NaN or Inf, or None (one device sync if all finite)."""
    floats = {name: t for name, t in tensors.items() if t.is_floating_point()}
    if not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats.values()]).all()):
        return None
    for name, tensor in floats.items():
        if not bool(torch.isfinite(tensor).all()):
            return name
    return None


def describe_non_finite(tensor: Tensor) -> str:
    """``'nan'``, ``'inf'`` or ``'nan and inf'`` for a tensor with non-finite entries."""
    kinds = [kind for kind, present in (("nan", torch.isnan(tensor).any()), ("inf", torch.isinf(tensor).any()))
             if bool(present)]
    return " and ".join(kinds) or "finite"


def check_finite(tensors: Mapping[str, Tensor], stage: str, cause: str) -> None:
    """Raise ``NumericalError`` naming ``stage``, the first non-finite tensor (layer) and ``cause``."""
    name = first_non_finite(tensors)
    if name is not None:
        raise NumericalError(f"{stage}: {describe_non_finite(tensors[name])} in {name}; {cause}")


def check_finite_weights(module: torch.nn.Module, where: str) -> None:
    """Refuse a model whose parameters or buffers hold NaN/Inf (a diverged training run)."""
    state = {name: tensor for name, tensor in module.state_dict().items() if isinstance(tensor, Tensor)}
    check_finite(state, f"the weights of {where}",
                 "the training diverged: retrain with a smaller --model.optimizer.lr (and keep "
                 "--trainer.gradient_clip_val 1.0), or check --model.diffusion.* and the data.")


def check_output_folder(path: str | Path, flag: str) -> Path:
    """Refuse an output folder that is a file or lies under a file (before any work is done).

    Raises:
        ConfigError: naming ``flag``, the file in the way, and the fix.
    """
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"is under {part}, which is a file"
                raise ConfigError(f"{flag} {path} {where}, not a folder; choose another path or move the file away.")
            break
    return path
