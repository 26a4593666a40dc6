"""Every plan of models a benchmark trains: the full model, ensemble members, LDS retraining, removal.

Each plan is a list of ``TrainingJob`` (``lit_attr.evaluation.jobs``) in a fixed order, built from the
settings, the folder layout and the training data alone, so every process builds the same list;
``evaluate.py retrain`` cuts it into shares with ``lit_attr.evaluation.job_share.JobShare`` (before
finished jobs are skipped) and ``lit_attr.evaluation.runner`` trains what is not done. Planning writes
the index files a job trains on (``--data.subset_file``), once.

Folders (``lit_attr.evaluation.layout``)::

    full/                                    the full model (seed retraining.base_seed)
    ensemble/seed_{s}/                       an extra full-data model of a method's ensemble
    retrain/subset_{i:03d}/seed_{k}/         seed slot k of LDS subset i (Mlodozeniec et al., eq. 13)
    removal/<method>/q{q:03d}_top_{f:g}/run  without the top fraction f of query q's influences
    removal/<method>/random_{f:g}/run        the random control of fraction f
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lit_attr.constants import DONE_FILE, SUBSET_INDICES_FILE
from lit_attr.data.index_files import read_index_file, write_index_file
from lit_attr.errors import ConfigError, StoreMismatchError
from lit_attr.evaluation.config import BenchmarkConfig, MethodConfig
from lit_attr.evaluation.jobs import RetrainJob, SeedingProtocol, TrainingJob, job_done, scale_steps, training_seed
from lit_attr.evaluation.layout import BenchmarkLayout
from lit_attr.evaluation.subsets import read_subsets_manifest, subset_indices_path
from lit_attr.metrics.retraining import random_removal, remaining_positions, top_influence_removal
from lit_attr.storage import read_json, write_atomic


def full_job(config: BenchmarkConfig, layout: BenchmarkLayout, train_indices: Sequence[int]) -> TrainingJob:
    """The model on all ``train_indices`` (stable indices) for ``retraining.full_steps`` steps: ``full/``."""
    indices = layout.full_indices_file
    _write_indices_once(indices, train_indices)
    job = RetrainJob(-1, 0, config.retraining.base_seed, indices, layout.full_dir)
    return TrainingJob(job, config.retraining.full_steps, "full model")


def ensemble_jobs(config: BenchmarkConfig, layout: BenchmarkLayout, train_indices: Sequence[int],
                  seeds: list[int]) -> list[TrainingJob]:
    """Extra full-data models (same recipe and steps, seed ``s``) of a method's ensemble: ``ensemble/seed_{s}``.

    Raises:
        ConfigError: repeated seeds, or a seed equal to the full model's (always a member).
    """
    full = full_job(config, layout, train_indices)
    if full.job.seed in seeds or len(set(seeds)) < len(seeds):
        raise ConfigError(f"ensemble_seeds {seeds} must be distinct and differ from retraining.base_seed "
                          f"({full.job.seed}, the full model's seed, which is always a member).")
    return [TrainingJob(RetrainJob(-1, 0, seed, full.job.indices_file, layout.ensemble_dir(seed)),
                        full.steps, f"ensemble model seed {seed}") for seed in seeds]


def trajectory_job(config: BenchmarkConfig, layout: BenchmarkLayout, train_indices: Sequence[int]) -> TrainingJob:
    """The rerun of the full model (same recipe, data, seed and steps) that saves the checkpoints of every method's
    ``ensemble_steps`` (their union): ``ensemble/trajectory/step_{n}/model.ckpt``.

    Raises:
        ConfigError: a step not below ``retraining.full_steps`` (the last checkpoint is the full model itself), or a
            finished rerun that did not save a step the config now asks for (the fix: delete its folder).
    """
    full = full_job(config, layout, train_indices)
    steps = tuple(sorted({s for m in config.methods for s in m.ensemble_steps}))
    if steps and steps[-1] >= full.steps:
        raise ConfigError(f"ensemble_steps {list(steps)} must be below retraining.full_steps={full.steps} (the full "
                          "model is always a member).")
    job = TrainingJob(RetrainJob(-1, 0, full.job.seed, full.job.indices_file, layout.trajectory_dir), full.steps,
                      "rerun of the full model with checkpoints", save_steps=steps)
    if job_done(job.job):
        saved = read_json(job.job.run_dir / DONE_FILE).get("save_steps") or []
        if not set(steps) <= set(saved):
            raise ConfigError(f"{job.job.run_dir} saved checkpoints at steps {saved}; this config asks for "
                              f"{list(steps)}. Delete {job.job.run_dir} to rerun it with every step (one training run).")
    return job


def plan_retraining(
    root: str | Path,
    num_seeds: int,
    protocol: SeedingProtocol | str = SeedingProtocol.INDEPENDENT,
    base_seed: int = 0,
    skip_done: bool = True,
) -> list[RetrainJob]:
    """The retraining jobs of the LDS subsets, minus finished ones unless ``skip_done`` is false.

    The list is slot-major: ``(subset 0, slot 0), (subset 1, slot 0), ..., (subset 0, slot 1), ...``,
    so an interrupted campaign first completes one model per subset.

    Args:
        root: benchmark folder with written subsets (``lit_attr.evaluation.subsets.create_subsets``).
        num_seeds: K, models per subset.
        protocol: seeding protocol (``SeedingProtocol`` or its string value).
        base_seed: seed of the protocol.
        skip_done: leave out jobs whose ``done.json`` exists (``job_done``).

    Raises:
        ConfigError: for ``num_seeds < 1``.
        DataError: if the subsets are not written yet.
    """
    if num_seeds < 1:
        raise ConfigError(f"Need num_seeds >= 1 models per subset, got num_seeds={num_seeds}.")
    num_subsets = read_subsets_manifest(root)["num_subsets"]
    pairs = [(i, k) for k in range(num_seeds) for i in range(num_subsets)]
    jobs = [RetrainJob(i, k, training_seed(protocol, base_seed, i, k, num_seeds), subset_indices_path(root, i),
                       BenchmarkLayout.of(root).retrain_dir(i, k)) for i, k in pairs]
    return [job for job in jobs if not (skip_done and job_done(job))]


def lds_jobs(config: BenchmarkConfig, layout: BenchmarkLayout, num_train: int) -> list[TrainingJob]:
    """Every LDS model, slot-major (``plan_retraining``), for as many epochs as the full model (``scale_steps``);
    slots >= 1 only on the first ``retraining.extra_seed_subsets`` subsets."""
    r, s = config.retraining, config.subsets
    extra = s.num_subsets if r.extra_seed_subsets is None else r.extra_seed_subsets
    jobs = plan_retraining(layout.root, r.num_seeds, r.protocol, r.base_seed, skip_done=False)
    steps = scale_steps(r.full_steps, num_train, round(s.fraction * num_train))
    return [TrainingJob(j, steps, f"subset {j.subset_index:03d} seed {j.slot}") for j in jobs
            if j.slot == 0 or j.subset_index < extra]


def removal_jobs(config: BenchmarkConfig, layout: BenchmarkLayout, train_indices: Sequence[int],
                 scores_of: Callable[[MethodConfig], np.ndarray]) -> list[TrainingJob]:
    """Per ``removal.methods`` entry and fraction f: a model without each tested query's top fraction f of
    positive influences, then a random control (seed ``removal.control_seed`` + fraction position).

    Args:
        train_indices: stable indices of the N training examples, in score-row order.
        scores_of: the (N, Q) scores that pick the removed examples of a method (called once per method).
    """
    rem = config.removal
    if not rem.queries:
        return []
    jobs = []
    for name in rem.methods:
        method = next(m for m in config.methods if m.name == name)
        jobs += _removal_jobs_of(config, layout, train_indices, name, torch.from_numpy(scores_of(method)))
    return jobs


def _removal_jobs_of(config: BenchmarkConfig, layout: BenchmarkLayout, train_indices: Sequence[int],
                     method: str, scores: torch.Tensor) -> list[TrainingJob]:
    rem, num_train = config.removal, len(train_indices)
    jobs = []
    for f_index, fraction in enumerate(rem.fractions):
        picks = [(q, top_influence_removal(scores, fraction, q)) for q in rem.queries]
        picks.append((-1, random_removal(num_train, fraction, rem.control_seed + f_index)))
        for q, removed in picks:
            keep = remaining_positions(num_train, removed)
            run_dir = layout.removal_run_dir(method, q, fraction)
            indices = run_dir.parent / SUBSET_INDICES_FILE
            _write_indices_once(indices, [int(train_indices[p]) for p in keep.tolist()])
            steps = scale_steps(config.retraining.full_steps, num_train, len(keep))
            job = RetrainJob(q, f_index, config.retraining.base_seed, indices, run_dir)
            jobs.append(TrainingJob(job, steps, f"removal {method} {run_dir.parent.name}"))
    return jobs


def _write_indices_once(path: Path, indices: Sequence[int]) -> None:
    """Write the index file ``path`` unless it exists (a plan names the same data every time); atomically, as
    worker processes plan side by side.

    Raises:
        StoreMismatchError: the file exists with other indices. For a removal model this happens when the
            method's scores or the damping chosen on the LDS subsets changed since it was planned (e.g. after
            more seeds were trained): its results would belong to the old picks.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: write_index_file(tmp, list(indices)))
    elif read_index_file(path) != [int(i) for i in indices]:
        raise StoreMismatchError(f"{path} holds other training indices than this plan picks now (the scores, or the "
                                 "damping chosen on the LDS subsets, changed since it was planned); delete "
                                 f"{path.parent} to retrain it on the current picks, or use another benchmark root.")
