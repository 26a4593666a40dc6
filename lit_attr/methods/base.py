"""``AttributionMethod``: the interface every benchmark method implements, and what it is given and returns.

A method scores every training example of a benchmark's data against the benchmark's queries into its
own folder (``<root>/methods/<name>``), refusing a folder scored with other settings, and reads its
scores back as ``ScoreSet`` s of shape (num_train, approximations, dampings, num_queries).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
from torch import Tensor

from lit_attr.attribution.queries import QueryConfig
from lit_attr.constants import ENSEMBLE_DIR, QUERY_IMAGES_FILE
from lit_attr.data.datamodules import AttributionDataModule
from lit_attr.errors import StoreMismatchError
from lit_attr.evaluation.config import MethodConfig, QueriesConfig, recipe_dataset_arguments
from lit_attr.storage import write_atomic


@dataclass
class ScoreSet:
    """A method's scores with ``draws`` draws (0: no draws, e.g. similarity).

    Attributes:
        approx: labels of axis 1 (the measurement whose gradient the scores use).
        dampings: values of axis 2.
        scores: (N, len(approx), len(dampings), Q).
        half_a, half_b: the same from the two halves of the draws (None when there are no draws).
        draw_sets: the same from each of several disjoint sets of ``draws`` draws (the first is ``scores``), to
            measure how much the LDS moves with the draws alone; empty when the run has only one such set.
    """

    draws: int
    approx: list[str]
    dampings: list[float]
    scores: np.ndarray
    half_a: np.ndarray | None
    half_b: np.ndarray | None
    draw_sets: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class ScoringInputs:
    """What a benchmark hands a method to score.

    Attributes:
        checkpoint: the full model's checkpoint.
        output_dir: the method's folder (holds a copy of the queries).
        curvature_dir: folder of K-FAC factors shared by methods with equal curvature settings.
        data: the recipe's ``data`` settings (``Benchmark.data_settings``).
        queries: the benchmark's query settings.
        dataset: the training dataset (``{"index", "image"}`` items), for methods that read images directly.
        query_images: the query images (Q, C, H, W) in [-1, 1], built on first call.
        ensemble: checkpoints of the ensemble's other members by name (``MethodConfig.ensemble_members``).
    """

    checkpoint: Path
    output_dir: Path
    curvature_dir: Path
    data: dict[str, Any]
    queries: QueriesConfig
    dataset: Any
    query_images: Callable[[], Tensor]
    ensemble: dict[str, Path] = field(default_factory=dict)


class AttributionMethod(ABC):
    """One attribution method of a benchmark, configured by its ``MethodConfig``."""

    kind: ClassVar[str]
    """Registry key: the ``kind`` of a ``methods:`` entry and ``attribute.py --method``'s value."""
    attribute_module: ClassVar[str]
    """The LightningModule (import path) that ``attribute.py --method <kind>`` scores with."""
    uses_curvature: ClassVar[bool] = False
    """Whether its scoring pass needs a ``KFACCallback``."""
    uses_model: ClassVar[bool] = True
    """Whether its scores depend on the diffusion model (False for image similarities)."""

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    @abstractmethod
    def score(self, inputs: ScoringInputs) -> None:
        """Score every training example into ``inputs.output_dir``; skipped when already done.

        Raises:
            StoreMismatchError: the folder holds scores made with other settings.
        """

    @abstractmethod
    def score_sets(self, output_dir: Path) -> list[ScoreSet]:
        """The finished scores, one ``ScoreSet`` per reported number of draws."""

    def refuse_changed(self, output_dir: Path, stored: dict[str, Any], wanted: dict[str, Any]) -> None:
        """Refuse a folder whose ``stored`` settings differ from the ``wanted`` ones (compared key by key)."""
        differing = {key: (stored.get(key), value) for key, value in wanted.items() if stored.get(key) != value}
        if differing:
            raise StoreMismatchError(f"{output_dir} holds scores of method {self.config.name!r} made with other "
                                     f"settings {differing} (stored, wanted); rename the method or delete that "
                                     "folder.")

    @staticmethod
    def member_dir(output_dir: Path, member: str) -> Path:
        """Scores of the ensemble member ``member`` (``MethodConfig.ensemble_members``: ``seed_{s}``, ``step_{n}``)."""
        return output_dir / ENSEMBLE_DIR / member

    @staticmethod
    def member_queries(inputs: ScoringInputs) -> QueryConfig:
        """The benchmark's query images, saved once under ``output_dir/ensemble/``, for every ensemble member (the
        members score the full model's queries, not samples of their own)."""
        query_file = inputs.output_dir / ENSEMBLE_DIR / QUERY_IMAGES_FILE
        if not query_file.exists():
            query_file.parent.mkdir(parents=True, exist_ok=True)
            images = inputs.query_images()
            write_atomic(query_file, lambda tmp: torch.save(images, tmp))
        return QueryConfig(file=str(query_file))

    def log(self, message: str) -> None:
        """A progress line of this method (``[methods] <name>: ...``)."""
        print(f"[methods] {self.config.name}: {message}", flush=True)


def attribution_data(recipe: str | dict, batch_size: int) -> AttributionDataModule:
    """The attribution data of a recipe file or of its ``data`` settings (``Benchmark.data_settings``)."""
    data = recipe if isinstance(recipe, dict) else (yaml.safe_load(Path(recipe).read_text()) or {}).get("data") or {}
    return AttributionDataModule(**recipe_dataset_arguments(data), batch_size=batch_size)
