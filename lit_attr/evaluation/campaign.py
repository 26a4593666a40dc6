"""The stages of a benchmark run, each resumable: full model, queries, subsets, retraining, scoring.

Layout under ``root`` (``subsets/``: ``lit_attr.evaluation.subsets``; ``retrain/``: ``lit_attr.evaluation.jobs``)::

    config.yaml                         the resolved benchmark settings (workers read it)
    full/model.ckpt, full/done.json     the full-data model (seed: retraining.base_seed)
    full/measurements.pt                its true measurements
    queries.pt                          the generated queries (``QuerySet``)
    retrain/subset_{i:03d}/seed_{k}/    model.ckpt, measurements.pt, done.json (written last)
    methods/<name>/                     scores of each method (``VariantInfluenceModule`` store)
    curvature/                          K-FAC factors shared by methods with equal settings
    removal/<method>/...                retraining without top influences (and random controls)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lit_attr.attribution.queries import QueryConfig, QuerySet, build_queries
from lit_attr.constants import (
    CURVATURE_DIR,
    DONE_FILE,
    ENSEMBLE_DIR,
    FULL_DIR,
    MEASUREMENTS_FILE,
    METHODS_DIR,
    MODEL_FILE,
    QUERIES_FILE,
    REMOVAL_DIR,
    SUBSET_INDICES_FILE,
)
from lit_attr.data.datasets import DatasetConfig
from lit_attr.data.index_files import write_index_file
from lit_attr.data.indexed import IndexedDataset
from lit_attr.errors import ConfigError
from lit_attr.evaluation.config import BenchmarkConfig, MethodConfig, recipe_dataset_arguments
from lit_attr.evaluation.training import train_model
from lit_attr.evaluation.true_measurements import measure_queries
from lit_attr.methods.base import ScoreSet
from lit_attr.metrics.retraining import random_removal, remaining_positions, top_influence_removal
from lit_attr.pipeline_io import load_ddpm_module
from lit_attr.evaluation.jobs import RetrainJob, job_done, mark_job_done, plan_retraining, scale_steps
from lit_attr.evaluation.subsets import create_subsets, read_subsets, read_subsets_manifest, subsets_exist
from lit_attr.storage import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingJob:
    """A model to train: ``job`` (subset file, seed, run folder) for ``steps`` steps."""

    job: RetrainJob
    steps: int
    label: str


class Benchmark:
    """One benchmark folder and its settings; methods run the stages in order."""

    def __init__(self, config: BenchmarkConfig) -> None:
        self.config = config
        self.root = Path(config.root).expanduser()
        self._dataset: IndexedDataset | None = None

    # ------------------------------------------------------------------ data and recipe
    def data_settings(self) -> dict:
        """The recipe's ``data`` section with the ``--data.*=`` entries of ``retraining.train_args`` applied."""
        import yaml

        recipe = Path(self.config.retraining.recipe)
        if not recipe.is_file():
            raise ConfigError(f"retraining.recipe {recipe} does not exist; point it to a train.py config.")
        data = dict((yaml.safe_load(recipe.read_text()) or {}).get("data") or {})
        for arg in self.config.retraining.train_args:
            if arg.startswith("--data.") and "=" in arg:
                key, value = arg[len("--data."):].split("=", 1)
                data[key] = yaml.safe_load(value)
        if data.get("subset_file"):
            raise ConfigError(f"{recipe} sets data.subset_file; the benchmark recipe must train on all data.")
        return data

    @property
    def dataset(self) -> IndexedDataset:
        """The full training set of the recipe (its ``data`` section)."""
        if self._dataset is None:
            data = recipe_dataset_arguments(self.data_settings())
            self._dataset = DatasetConfig(name=data.pop("dataset", "digits"), **data, train=True).build()
        return self._dataset

    @property
    def num_train(self) -> int:
        return len(self.dataset)

    # ------------------------------------------------------------------ full model and queries
    def full_job(self) -> TrainingJob:
        indices = self.root / FULL_DIR / SUBSET_INDICES_FILE
        if not indices.exists():
            indices.parent.mkdir(parents=True, exist_ok=True)
            write_index_file(indices, list(self.dataset.indices))
        job = RetrainJob(-1, 0, self.config.retraining.base_seed, indices, self.root / FULL_DIR)
        return TrainingJob(job, self.config.retraining.full_steps, "full model")

    def ensemble_jobs(self, seeds: list[int]) -> list[TrainingJob]:
        """Extra full-data models (same recipe and steps, seed ``s``) of a method's ensemble: ``ensemble/seed_{s}``."""
        full = self.full_job()
        if full.job.seed in seeds or len(set(seeds)) < len(seeds):
            raise ConfigError(f"ensemble_seeds {seeds} must be distinct and differ from retraining.base_seed "
                              f"({full.job.seed}, the full model's seed, which is always a member).")
        return [TrainingJob(RetrainJob(-1, 0, seed, full.job.indices_file, self.root / ENSEMBLE_DIR / f"seed_{seed}"),
                            full.steps, f"ensemble model seed {seed}") for seed in seeds]

    def queries(self) -> QuerySet:
        """Generate (once) the queries with the full model: ``root/queries.pt``."""
        path = self.root / QUERIES_FILE
        q = self.config.queries
        if path.exists():
            queries = QuerySet.load(path)
            if len(queries.images) != q.num_generated or queries.source != f"generated:seed={q.seed}":
                raise ConfigError(f"{path} holds {len(queries.images)} queries from {queries.source}, but queries.* asks "
                                  f"for {q.num_generated} with seed {q.seed}; use another root (the models were "
                                  "measured on the stored queries).")
            return queries
        ddpm = load_ddpm_module(self.full_job().job.run_dir / MODEL_FILE)
        queries = build_queries(QueryConfig(q.num_generated, q.seed, q.num_sampling_steps), ddpm, self.dataset)
        tmp = path.with_name(path.name + ".tmp")
        queries.save(tmp)
        tmp.replace(path)
        return queries

    # ------------------------------------------------------------------ LDS retraining
    def write_subsets(self) -> None:
        """The M subsets (once; a rerun with other subset settings is refused)."""
        s = self.config.subsets
        if subsets_exist(self.root):
            manifest = read_subsets_manifest(self.root)
            wanted = {"num_subsets": s.num_subsets, "fraction": s.fraction, "seed": s.seed, "num_train": self.num_train}
            differing = {k: (manifest.get(k), v) for k, v in wanted.items() if manifest.get(k) != v}
            if differing:
                raise ConfigError(f"{self.root} holds subsets made with other settings {differing} (stored, wanted); "
                                  "use another root or delete its subsets/ and retrain/ folders.")
            return
        create_subsets(self.root, self.num_train, s.num_subsets, s.fraction, s.seed,
                       train_indices=list(self.dataset.indices))

    def lds_jobs(self) -> list[TrainingJob]:
        """Every LDS model, slot-major; slots >= 1 only on the first ``extra_seed_subsets`` subsets."""
        r, s = self.config.retraining, self.config.subsets
        extra = s.num_subsets if r.extra_seed_subsets is None else r.extra_seed_subsets
        jobs = plan_retraining(self.root, r.num_seeds, r.protocol, r.base_seed, skip_done=False)
        size = round(s.fraction * self.num_train)
        steps = scale_steps(r.full_steps, self.num_train, size)
        return [TrainingJob(j, steps, f"subset {j.subset_index:03d} seed {j.slot}") for j in jobs
                if j.slot == 0 or j.subset_index < extra]

    # ------------------------------------------------------------------ running jobs
    def run_jobs(self, jobs: list[TrainingJob], workers: int = 1, stage: str = "lds") -> None:
        """Train and measure every job that is not done; ``workers`` > 1 runs subprocesses side by side."""
        pending = [j for j in jobs if not job_done(j.job)]
        for job in jobs:
            if job not in pending:
                steps = read_json(job.job.run_dir / DONE_FILE).get("steps")
                if steps != job.steps:
                    raise ConfigError(f"{job.job.run_dir} was trained for {steps} steps, this benchmark asks for "
                                      f"{job.steps} (retraining.full_steps changed?); use another root.")
        print(f"[{stage}] {len(jobs) - len(pending)}/{len(jobs)} models already done; training {len(pending)}.",
              flush=True)
        if not pending:
            return
        if workers > 1 and len(pending) > 1:
            self._run_workers(stage, min(workers, len(pending)))
            still = [j.label for j in jobs if not job_done(j.job)]
            if still:
                raise RuntimeError(f"[{stage}] {len(still)} models failed (first: {still[:3]}); see the worker "
                                   "output above, then rerun the same command to resume.")
            return
        start = time.perf_counter()
        for n, job in enumerate(pending, 1):
            seconds = self.run_job(job)
            elapsed = time.perf_counter() - start
            eta = elapsed / n * (len(pending) - n)
            print(f"[{stage}] {n}/{len(pending)} {job.label}: {seconds:.0f} s (elapsed {elapsed / 60:.1f} min, "
                  f"ETA {eta / 60:.1f} min)", flush=True)

    def run_job(self, job: TrainingJob) -> float:
        """Train, measure and mark one job done; returns its wall time."""
        start = time.perf_counter()
        t = self.config.true_measurements
        r = self.config.retraining
        run = train_model(r.recipe, job.job.run_dir, job.steps, job.job.seed, job.job.indices_file, r.train_args)
        values = measure_queries(run.module, self.queries().images, t.measurements, t.num_draws, t.seed)
        torch.save({"values": values, "measurements": list(t.measurements), "num_draws": t.num_draws,
                    "seed": t.seed}, job.job.run_dir / MEASUREMENTS_FILE)
        seconds = time.perf_counter() - start
        mark_job_done(job.job, {"steps": job.steps, "fit_seconds": round(run.fit_seconds, 1),
                                "seconds": round(seconds, 1)})
        return seconds

    def _run_workers(self, stage: str, workers: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        script = Path(__file__).resolve().parents[2] / "evaluate.py"
        config = self.root / "config.yaml"
        procs = [subprocess.Popen([sys.executable, str(script), "retrain", "--config", str(config), "--stage", stage,
                                   f"--worker={w}", f"--num_workers={workers}"], env=env)
                 for w in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            log.error("Worker exit codes: %s", codes)

    # ------------------------------------------------------------------ measurements
    def full_measurements(self) -> torch.Tensor:
        """(3, len(measurements), Q) of the full model (all draws, half 1, half 2)."""
        return self._measurements(self.full_job().job.run_dir)

    def lds_measurements(self) -> torch.Tensor:
        """float64 (M, K, 3, len(measurements), Q), NaN where a model is missing."""
        r, s = self.config.retraining, self.config.subsets
        shape = (s.num_subsets, r.num_seeds, 3, len(self.config.true_measurements.measurements),
                 self.config.queries.num_generated)
        out = torch.full(shape, float("nan"), dtype=torch.float64)
        for job in self.lds_jobs():
            if job_done(job.job):
                out[job.job.subset_index, job.job.slot] = self._measurements(job.job.run_dir)
        return out

    def _measurements(self, run_dir: Path) -> torch.Tensor:
        stored = torch.load(run_dir / MEASUREMENTS_FILE, weights_only=True)
        t = self.config.true_measurements
        if stored["measurements"] != list(t.measurements) or stored["num_draws"] != t.num_draws or stored["seed"] != t.seed:
            raise ConfigError(f"{run_dir} was measured with other true_measurements settings; use another root.")
        return stored["values"]

    # ------------------------------------------------------------------ methods
    def method_dir(self, method: MethodConfig) -> Path:
        return self.root / METHODS_DIR / method.name

    def run_method(self, method: MethodConfig) -> None:
        """Score every training example for every variant of ``method`` (resumable)."""
        from lit_attr.methods.base import ScoringInputs
        from lit_attr.methods.registry import method_for

        out = self.method_dir(method)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / QUERIES_FILE).exists():
            self.queries()
            shutil.copyfile(self.root / QUERIES_FILE, out / QUERIES_FILE)
        members = self.ensemble_jobs(method.ensemble_seeds)
        if members:
            self.run_jobs(members, stage=f"ensemble {method.name}")
        inputs = ScoringInputs(checkpoint=self.full_job().job.run_dir / MODEL_FILE, output_dir=out,
                               curvature_dir=self.root / CURVATURE_DIR, data=self.data_settings(),
                               queries=self.config.queries, dataset=self.dataset,
                               query_images=lambda: self.queries().images,
                               ensemble={job.job.seed: job.job.run_dir / MODEL_FILE for job in members})
        method_for(method).score(inputs)

    def score_sets(self, method: MethodConfig) -> list[ScoreSet]:
        """The scores of a finished method for each reported number of draws."""
        from lit_attr.methods.registry import method_for

        return method_for(method).score_sets(self.method_dir(method))

    # ------------------------------------------------------------------ removal
    def removal_jobs(self) -> list[TrainingJob]:
        """Per removal method: models without each tested query's top influences, and a random control per fraction."""
        rem = self.config.removal
        if not rem.queries:
            return []
        jobs = []
        for name in rem.methods:
            method = next(m for m in self.config.methods if m.name == name)
            jobs += self._removal_jobs_of(method)
        return jobs

    def _removal_jobs_of(self, method: MethodConfig) -> list[TrainingJob]:
        rem = self.config.removal
        scores = torch.from_numpy(self.removal_scores(method))
        base = self.root / REMOVAL_DIR / method.name
        jobs = []
        for f_index, fraction in enumerate(rem.fractions):
            picks = [(q, top_influence_removal(scores, fraction, q), f"q{q:03d}_top_{fraction:g}")
                     for q in rem.queries]
            picks.append((-1, random_removal(self.num_train, fraction, rem.control_seed + f_index),
                          f"random_{fraction:g}"))
            for q, removed, name in picks:
                keep = remaining_positions(self.num_train, removed)
                indices = base / name / SUBSET_INDICES_FILE
                if not indices.exists():
                    indices.parent.mkdir(parents=True, exist_ok=True)
                    write_index_file(indices, [int(self.dataset.indices[p]) for p in keep.tolist()])
                steps = scale_steps(self.config.retraining.full_steps, self.num_train, len(keep))
                job = RetrainJob(q, f_index, self.config.retraining.base_seed, indices, base / name / "run")
                jobs.append(TrainingJob(job, steps, f"removal {method.name} {name}"))
        return jobs

    def removal_scores(self, method: MethodConfig) -> np.ndarray:
        """(N, Q) scores that pick the removed examples: ``removal.measurement`` (or the method's own function,
        e.g. pixel cosine) at ``removal.num_draws``, at the damping with the best mean LDS over all LDS subsets
        for that target (chosen on the LDS models, never on the removal models)."""
        from lit_attr.metrics.lds import LinearDatamodelingScore, subsets_to_masks

        rem = self.config.removal
        chosen = pick_score_set(self.score_sets(method), rem.measurement, rem.num_draws)
        approx = chosen.approx.index(rem.measurement) if rem.measurement in chosen.approx else 0
        candidates = chosen.scores[:, approx]  # (N, D, Q)
        if candidates.shape[1] == 1:
            return candidates[:, 0]
        target = list(self.config.true_measurements.measurements).index(rem.measurement)
        masks = subsets_to_masks(read_subsets(self.root), self.num_train)
        measured = self.lds_measurements()[:, :, 0, target]

        def mean_lds(d: int) -> float:
            metric = LinearDatamodelingScore()
            metric.update(torch.from_numpy(np.ascontiguousarray(candidates[:, d])).double(), masks, measured)
            return float(metric.compute()["mean"])

        return candidates[:, max(range(candidates.shape[1]), key=mean_lds)]

    def save_config(self, text: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "config.yaml").write_text(text)

    def link_reused(self) -> None:
        """Symlink ``full/``, ``queries.pt``, ``methods/``, ``curvature/`` and ``ensemble/`` from ``config.reuse`` (once)."""
        if self.config.reuse is None:
            return
        source = Path(self.config.reuse).expanduser().resolve()
        if not (source / FULL_DIR / DONE_FILE).exists():
            raise ConfigError(f"reuse={self.config.reuse}: no finished full model there; run that benchmark first.")
        if source == self.root.resolve():
            raise ConfigError("reuse must name another benchmark root than root.")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in (FULL_DIR, QUERIES_FILE, METHODS_DIR, CURVATURE_DIR, ENSEMBLE_DIR):
            link = self.root / name
            if (source / name).exists() and not link.exists() and not link.is_symlink():
                link.symlink_to(source / name, target_is_directory=(source / name).is_dir())


def pick_score_set(sets: list[ScoreSet], measurement: str, num_draws: int | None) -> ScoreSet:
    """The score set with ``num_draws`` draws (None: the most) that can score ``measurement``: it uses that
    measurement's gradient, or it has a single function of its own (pixel / CLIP cosine, D-TRAK's sqnorm)."""
    chosen = max(sets, key=lambda s: s.draws) if num_draws is None else next(
        (s for s in sets if s.draws == num_draws), None)
    if chosen is None:
        raise ConfigError(f"removal.num_draws={num_draws} is not among the method's report_draws "
                          f"{[s.draws for s in sets]}.")
    if measurement not in chosen.approx and len(chosen.approx) > 1:
        raise ConfigError(f"removal.measurement={measurement!r} is not among the method's measurements {chosen.approx}.")
    return chosen
