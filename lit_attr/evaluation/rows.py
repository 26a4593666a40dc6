"""The typed rows of a benchmark's results (``lit_attr.evaluation.results``) and their JSON form.

Every number is a plain float (``mean``, ``stderr``: mean and standard error over queries, Mlodozeniec et
al. eq. 13 per query; ``subset_se``: the standard deviation of the LDS over a bootstrap of the subsets,
``lit_attr.metrics.lds.subset_bootstrap``); ``Results.to_json`` gives ``results.json``'s dict, keys in field
order, optional parts (``None``) and in-memory fields (``metadata={"json": False}``) left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from lit_attr.metrics.lds import mean_and_stderr


def to_json(row: Any) -> dict[str, Any]:
    """``dataclasses.asdict(row)`` without its optional top-level fields (default ``None``) that are ``None``
    and without its in-memory fields (``metadata={"json": False}``): they are absent from the JSON."""
    return {f.name: value for f, value in zip(fields(row), asdict(row).values())
            if not (value is None and f.default is None) and f.metadata.get("json", True)}


@dataclass(frozen=True)
class Stat:
    """Mean and standard error over queries (NaN s.e. for a single query)."""

    mean: float
    stderr: float

    @classmethod
    def of(cls, values: torch.Tensor) -> Stat:
        """``mean_and_stderr`` of (Q,) per-query values."""
        mean, stderr = mean_and_stderr(values)
        return cls(float(mean), float(stderr))


NA = Stat(float("nan"), float("nan"))
"""A statistic that was not computed (``n/a`` in the tables)."""


@dataclass(frozen=True)
class PairedDifference:
    """Mean ± s.e. over queries of the per-query difference to ``method``'s value (paired by query)."""

    method: str
    mean: float
    stderr: float

    @classmethod
    def of(cls, method: str, difference: torch.Tensor) -> PairedDifference:
        """Mean ± s.e. of the (Q,) per-query ``difference`` to ``method``."""
        stat = Stat.of(difference)
        return cls(method, stat.mean, stat.stderr)


@dataclass(frozen=True)
class LDSValue:
    """LDS of one score matrix: mean, s.e., per query, and the per-query LDS on each fold of the subsets."""

    mean: float
    stderr: float
    per_query: list[float]
    folds: list[list[float]]


@dataclass(frozen=True)
class DrawSetSpread:
    """LDS of the scores of each disjoint set of training draws, and their standard deviation."""

    lds: list[float]
    sd: float


@dataclass(frozen=True)
class LDSRow:
    """The LDS of one method, S (``num_draws``), target, approximating measurement and damping."""

    method: str
    kind: str
    draw_scheme: str
    num_draws: int
    target: str
    approx: str
    damping: float
    default_damping: bool
    split_half: Stat
    mean: float
    stderr: float
    per_query: list[float]
    folds: list[list[float]]
    draw_sets: DrawSetSpread | None = None
    subset_se: float | None = None
    subset_replicates: tuple[float, ...] | None = field(default=None, repr=False, compare=False,
                                                        metadata={"json": False})
    """The mean LDS on each bootstrap resample of the subsets (shared by every row, so differences pair)."""


@dataclass(frozen=True)
class Diagnostics:
    """The noise diagnostics of one target measurement (``seed_reliability`` and ``oracle_lds`` need >= 3
    subsets with two seeds)."""

    measurement_mc_reliability: Stat
    seed_reliability: Stat | None = None
    oracle_lds: Stat | None = None

    def stats(self) -> dict[str, Stat]:
        """The computed statistics by name, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class DampedStat:
    """An LDS at one damping."""

    damping: float
    mean: float
    stderr: float


@dataclass(frozen=True)
class CrossFitted:
    """Cross-fitted LDS (``lit_attr.evaluation.selection``) and the damping chosen on each fold."""

    mean: float
    stderr: float
    per_query: list[float]
    dampings: list[float]


@dataclass(frozen=True)
class ComparisonRow:
    """One method and target of the comparison table at the default, held-out-chosen and best damping."""

    method: str
    target: str
    approx: str
    num_draws: int
    default: DampedStat
    selected: CrossFitted
    best: DampedStat
    vs_reference: PairedDifference | None = None
    subset_se: float | None = None
    """Bootstrap-over-subsets s.e. of the held-out LDS (the rows at the two folds' dampings, averaged)."""
    vs_reference_subset_se: float | None = None
    """The same for the paired difference to the reference method."""


@dataclass(frozen=True)
class SubstitutionTable:
    """LDS (``mean``, ``stderr``: A x T) of every target when the scores use each approximating measurement."""

    method: str
    num_draws: int
    damping: float
    approx: list[str]
    targets: list[str]
    mean: list[list[float]]
    stderr: list[list[float]]


@dataclass(frozen=True)
class RemovalRow:
    """Relative change of the measurement after removing the top ``fraction`` of influences (per query), the
    random control, and the paired difference to the first removal method."""

    fraction: float
    method: str
    measurement: str
    mean: float
    stderr: float
    control_mean: float
    control_stderr: float
    per_query: list[float]
    vs_reference: PairedDifference


@dataclass(frozen=True)
class Results:
    """Everything the report shows (``compute_results``)."""

    protocol: str
    num_subsets: int
    num_subsets_with_two_seeds: int
    num_queries: int
    num_train: int
    diagnostics: dict[str, Diagnostics]
    lds: list[LDSRow]
    missing_methods: list[str]
    comparison: list[ComparisonRow]
    substitution: list[SubstitutionTable]
    removal: list[RemovalRow]

    def to_json(self) -> dict[str, Any]:
        """The dict written to ``results.json``."""
        out = asdict(self)
        out["diagnostics"] = {target: to_json(d) for target, d in self.diagnostics.items()}
        for name in ("lds", "comparison"):
            out[name] = [to_json(row) for row in getattr(self, name)]
        return out
