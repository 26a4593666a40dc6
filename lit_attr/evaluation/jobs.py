"""The models a benchmark trains: seeding protocol, jobs, done markers and step counts.

Mlodozeniec et al., section 4 (eq. 13) and App. G.5-G.7, after Park et al. (2023): K models per
subset D_i (``lit_attr.evaluation.subsets``) with different seeds (K = 5), each trained for the same
number of *epochs* as the full model (App. G.7, ``scale_steps``).

Layout under one benchmark ``root``::

    retrain/subset_{i:03d}/seed_{k}/          run folder of seed slot k of subset i
    retrain/subset_{i:03d}/seed_{k}/done.json written last by ``mark_job_done``

The plans (which jobs, in which order) are ``lit_attr.evaluation.plans``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from lit_attr.constants import DONE_FILE
from lit_attr.errors import ConfigError, StoreMismatchError
from lit_attr.evaluation.subsets import file_sha256
from lit_attr.storage import read_json, write_json_atomic


class SeedingProtocol(str, Enum):
    """How the seeds of the retrained models are chosen (``training_seed``).

    The seed drives initialisation *and* the stream of minibatch order, timesteps and noise.
    """

    INDEPENDENT = "independent"
    """Every model its own seed: ``seed + subset_index * num_seeds + slot`` (Park et al., 2023)."""
    COMMON = "common"
    """All models of seed slot k share ``seed + k``, so the K-model ensemble of eq. (13) differs
    between subsets only through the data (common random numbers reduce the measurement noise)."""


SeedingProtocolName = Literal["independent", "common"]
"""``SeedingProtocol``'s values, for the benchmark config."""


def training_seed(
    protocol: SeedingProtocol | str, base_seed: int, subset_index: int, slot: int, num_seeds: int
) -> int:
    """The seed of the model of seed slot ``slot`` (0..num_seeds-1) trained on subset ``subset_index``.

    Raises:
        ConfigError: unknown protocol, or negative/out-of-range arguments.
    """
    protocol = _protocol(protocol)
    if base_seed < 0 or subset_index < 0 or num_seeds < 1 or not 0 <= slot < num_seeds:
        raise ConfigError(f"Need base_seed >= 0, subset_index >= 0 and 0 <= slot < num_seeds; got "
                          f"base_seed={base_seed}, subset_index={subset_index}, slot={slot}, num_seeds={num_seeds}.")
    if protocol is SeedingProtocol.COMMON:
        return base_seed + slot
    return base_seed + subset_index * num_seeds + slot


@dataclass(frozen=True)
class RetrainJob:
    """One model to retrain: seed slot ``slot`` of subset ``subset_index``.

    Attributes:
        subset_index: i, the subset D_i.
        slot: k in 0..num_seeds-1, the seed slot.
        seed: the training seed (``training_seed``), for init and data/noise streams.
        indices_file: the subset's index file (pass as ``--data.subset_file``).
        run_dir: output folder, ``root/retrain/subset_{i:03d}/seed_{k}``.
    """

    subset_index: int
    slot: int
    seed: int
    indices_file: Path
    run_dir: Path


@dataclass(frozen=True)
class TrainingJob:
    """A model to train: ``job`` (subset file, seed, run folder) for ``steps`` steps, checkpoints at ``save_steps``."""

    job: RetrainJob
    steps: int
    label: str
    save_steps: tuple[int, ...] = ()
    """Optimiser steps after which the run also saves ``step_{n}/model.ckpt`` (a checkpoint ensemble's members)."""


def job_done(job: RetrainJob) -> bool:
    """Whether ``job.run_dir/done.json`` exists.

    Raises:
        StoreMismatchError: if the marker records another seed (a different protocol or base seed) or
            another subset file (the subsets were rewritten with ``--overwrite``).
    """
    path = job.run_dir / DONE_FILE
    if not path.is_file():
        return False
    marker = read_json(path)
    if marker.get("seed") != job.seed:
        raise StoreMismatchError(f"{job.run_dir} was trained with seed {marker.get('seed')}; this plan uses seed "
                                 f"{job.seed}. Use the same --protocol and --seed, or another benchmark root.")
    if marker.get("indices_sha256") != file_sha256(job.indices_file):
        raise StoreMismatchError(f"{job.run_dir} was trained on another version of {job.indices_file}; delete "
                                 f"{job.run_dir.parent.parent} to retrain on the current subsets.")
    return True


def mark_job_done(job: RetrainJob, info: dict[str, Any] | None = None) -> None:
    """Write ``done.json`` atomically; call it last, after the checkpoint and measurements are saved.

    The marker holds ``info`` plus the seed, subset, slot and the SHA-256 of the subset's index file,
    which ``job_done`` checks.
    """
    job.run_dir.mkdir(parents=True, exist_ok=True)
    marker = {**(info or {}), "seed": job.seed, "subset_index": job.subset_index, "slot": job.slot,
              "indices_sha256": file_sha256(job.indices_file)}
    write_json_atomic(job.run_dir / DONE_FILE, marker)


def scale_steps(full_steps: int, full_size: int, subset_size: int) -> int:
    """Training steps for a subset with as many epochs as the full model (App. G.7).

    Returns:
        ``max(1, round(full_steps * subset_size / full_size))``; e.g. CIFAR-2: 32000 steps on 5000
        examples give 16000 steps on 2500.

    Raises:
        ConfigError: for non-positive arguments.
    """
    if full_steps < 1 or full_size < 1 or subset_size < 1:
        raise ConfigError(f"Need positive full_steps, full_size and subset_size; "
                          f"got {full_steps}, {full_size}, {subset_size}.")
    return max(1, round(full_steps * subset_size / full_size))


def _protocol(protocol: SeedingProtocol | str) -> SeedingProtocol:
    try:
        return SeedingProtocol(protocol)
    except ValueError:
        choices = ", ".join(p.value for p in SeedingProtocol)
        raise ConfigError(f"protocol={protocol!r} is not supported; choose one of {choices}.") from None
