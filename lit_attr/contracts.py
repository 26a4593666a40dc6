"""What an attribution module and the callbacks of its ``Trainer`` hand each other, as typed values.

- ``KFACCallback`` asks a ``CurvatureConsumer`` for a ``CurvatureRequest`` at ``on_predict_start``
  (None: nothing to score, or a method without curvature such as TRAK), fits or loads the K-FAC
  curvature it describes and hands back the eigendecomposition with ``set_curvature``.
- ``ScoreWriter`` asks a ``ScoreProducer`` for its ``ScoreTarget`` (the memory-mapped store and the
  map from stable dataset index to score row) and writes each predicted block of rows into it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import nn
from torch.utils.data import DataLoader

from lit_attr.curvature.eigen import KFACEigen
from lit_attr.diffusion.draws import DrawScheme
from lit_attr.diffusion.schedule import DiffusionSchedule
from lit_attr.storage import ScoreStore


@dataclass(frozen=True)
class CurvatureRequest:
    """The curvature an attribution run needs.

    Attributes:
        unet: the network whose K-FAC'd layers the factors describe (the EMA / attribution weights).
        schedule: its diffusion schedule (timesteps and noise of the draws).
        factors_path: where the factors are stored for this run (a ``KFACCallback.factors_path`` wins).
        identity: model hash and data fingerprint, stored with the factors and compared on load.
        seed: the run's seed (used unless the callback sets its own).
        draw_scheme: the run's draw scheme (its per-example twin is used unless the callback sets one).
        refit: refit even when stored factors match (``--model.overwrite true``).
        data: builds the loader of the curvature pass (called only when the factors are fitted).
    """

    unet: nn.Module
    schedule: DiffusionSchedule
    factors_path: Path
    identity: dict[str, Any]
    seed: int
    draw_scheme: DrawScheme
    refit: bool
    data: Callable[[], DataLoader]


@dataclass(frozen=True)
class ScoreTarget:
    """Where predicted score rows go: ``store`` row ``row_of[index]`` for training example ``index``."""

    store: ScoreStore
    row_of: Mapping[int, int]


@runtime_checkable
class CurvatureConsumer(Protocol):
    """A module that takes the K-FAC curvature from ``KFACCallback``."""

    def curvature_request(self) -> CurvatureRequest | None:
        """The curvature this run needs; None when it needs none."""

    def set_curvature(self, eigen: KFACEigen) -> None:
        """Receive the (EK-)FAC eigendecomposition."""


@runtime_checkable
class ScoreProducer(Protocol):
    """A module whose predictions ``{"index": (B,), "scores": (B, num_columns)}`` fill a ``ScoreStore``."""

    def score_target(self) -> ScoreTarget:
        """The store and row map, prepared in ``setup``."""
