"""Every path under a benchmark ``root``, built from the names in ``lit_attr.constants``.

Layout::

    config.yaml                         the resolved benchmark settings (workers read it)
    full/model.ckpt, full/done.json     the full-data model (seed: retraining.base_seed)
    full/indices.txt                    index file of all training data
    full/measurements.pt                its true measurements
    queries.pt                          the generated queries (``QuerySet``)
    subsets/                            the LDS subsets and their manifest (``lit_attr.evaluation.subsets``)
    retrain/subset_{i:03d}/seed_{k}/    model.ckpt, measurements.pt, done.json (written last)
    ensemble/seed_{s}/                  extra full-data models of a method's ensemble
    methods/<name>/                     scores of each method
    curvature/                          K-FAC factors shared by methods with equal settings
    removal/<method>/<name>/            indices.txt and run/ of a model retrained without top influences
    results.json, results.md, *.png     the report (``lit_attr.evaluation.results``), tensorboard/ its events
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lit_attr.constants import (
    BENCHMARK_CONFIG_FILE,
    CURVATURE_DIR,
    ENSEMBLE_DIR,
    FULL_DIR,
    METHODS_DIR,
    QUERIES_FILE,
    REMOVAL_DIR,
    RETRAIN_DIR,
    SUBSET_INDICES_FILE,
    SUBSETS_DIR,
)

REUSABLE = (FULL_DIR, QUERIES_FILE, METHODS_DIR, CURVATURE_DIR, ENSEMBLE_DIR)
"""What ``reuse:`` links from another benchmark root: everything that does not depend on the subsets."""


@dataclass(frozen=True)
class BenchmarkLayout:
    """The paths of one benchmark folder ``root`` (already ``expanduser``-ed; see ``of``)."""

    root: Path

    @classmethod
    def of(cls, root: str | Path) -> BenchmarkLayout:
        return cls(Path(root).expanduser())

    @property
    def config_file(self) -> Path:
        return self.root / BENCHMARK_CONFIG_FILE

    @property
    def full_dir(self) -> Path:
        return self.root / FULL_DIR

    @property
    def full_indices_file(self) -> Path:
        return self.full_dir / SUBSET_INDICES_FILE

    @property
    def queries_file(self) -> Path:
        return self.root / QUERIES_FILE

    @property
    def curvature_dir(self) -> Path:
        return self.root / CURVATURE_DIR

    @property
    def subsets_dir(self) -> Path:
        return self.root / SUBSETS_DIR

    def subset_indices_file(self, subset_index: int) -> Path:
        """``subsets/subset_{i:03d}/indices.txt``."""
        return self.subsets_dir / f"subset_{subset_index:03d}" / SUBSET_INDICES_FILE

    def retrain_dir(self, subset_index: int, slot: int) -> Path:
        """``retrain/subset_{i:03d}/seed_{k}``: seed slot k of subset i."""
        return self.root / RETRAIN_DIR / f"subset_{subset_index:03d}" / f"seed_{slot}"

    def ensemble_dir(self, seed: int) -> Path:
        """``ensemble/seed_{s}``: the extra full-data model with seed s."""
        return self.root / ENSEMBLE_DIR / f"seed_{seed}"

    def method_dir(self, name: str) -> Path:
        return self.root / METHODS_DIR / name

    @property
    def removal_root(self) -> Path:
        return self.root / REMOVAL_DIR

    def removal_dir(self, method_name: str) -> Path:
        return self.removal_root / method_name
