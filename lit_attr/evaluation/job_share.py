"""``JobShare``: the one way to cut a benchmark's training jobs into shares for several machines or workers.

``evaluate.py retrain --start S --count C --worker w --num_workers W`` trains the jobs
``jobs[S:S + C][w::W]`` of the full list of a stage's plan (``lit_attr.evaluation.plans``: ``lds_jobs`` /
``removal_jobs``). Shares are cut before finished jobs are skipped, so a share names the same jobs however far the
benchmark has got.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from lit_attr.errors import ConfigError

Job = TypeVar("Job")


@dataclass(frozen=True)
class JobShare:
    """A contiguous range of the job list, then every ``num_workers``-th job of it from ``worker``.

    Attributes:
        start: first job of the range (0-based position in the full list).
        count: jobs in the range; ``None`` for all from ``start``.
        worker: this worker's index in ``[0, num_workers)``.
        num_workers: workers splitting the range between them.
    """

    start: int = 0
    count: int | None = None
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"--num_workers must be >= 1, got {self.num_workers}.")
        if not 0 <= self.worker < self.num_workers:
            raise ConfigError(f"--worker must be in [0, --num_workers - 1] = [0, {self.num_workers - 1}], "
                              f"got {self.worker}.")
        if self.start < 0 or (self.count is not None and self.count < 0):
            raise ConfigError(f"--start and --count must be >= 0, got {self.start} and {self.count}.")

    def select(self, jobs: Sequence[Job]) -> list[Job]:
        """The jobs of this share, in the order of ``jobs``."""
        end = None if self.count is None else self.start + self.count
        return list(jobs[self.start:end][self.worker::self.num_workers])
