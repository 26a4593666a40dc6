"""The stages of a benchmark run, each resumable: full model, queries, subsets, retraining, scoring, removal.

``Benchmark`` coordinates them over one folder (paths: ``lit_attr.evaluation.layout``); the subsets are
written by ``lit_attr.evaluation.subsets``, the models to train are planned by ``lit_attr.evaluation.plans``,
and trained and measured by ``lit_attr.evaluation.runner``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from lit_attr.attribution.queries import QueryConfig, QuerySet, build_queries
from lit_attr.constants import DONE_FILE, MEASUREMENTS_FILE, MODEL_FILE, QUERIES_FILE
from lit_attr.data.datasets import DatasetConfig
from lit_attr.data.indexed import IndexedDataset
from lit_attr.errors import ConfigError
from lit_attr.evaluation.config import BenchmarkConfig, MethodConfig, recipe_dataset_arguments
from lit_attr.evaluation.jobs import TrainingJob, job_done
from lit_attr.evaluation.layout import REUSABLE, BenchmarkLayout
from lit_attr.evaluation.plans import ensemble_jobs, lds_jobs, trajectory_job
from lit_attr.evaluation.runner import run_jobs
from lit_attr.evaluation.subsets import create_subsets, read_subsets, read_subsets_manifest, subsets_exist
from lit_attr.methods.base import ScoreSet
from lit_attr.pipeline_io import load_ddpm_module
from lit_attr.step_checkpoints import step_checkpoint
from lit_attr.storage import write_atomic


class Benchmark:
    """One benchmark folder and its settings; methods run the stages in order."""

    def __init__(self, config: BenchmarkConfig) -> None:
        self.config = config
        self.root = Path(config.root).expanduser()
        self.layout = BenchmarkLayout(self.root)
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

    # ------------------------------------------------------------------ queries
    def queries(self) -> QuerySet:
        """Generate (once) the queries with the full model: ``root/queries.pt``."""
        path = self.layout.queries_file
        q = self.config.queries
        if path.exists():
            queries = QuerySet.load(path)
            if len(queries.images) != q.num_generated or queries.source != f"generated:seed={q.seed}":
                raise ConfigError(f"{path} holds {len(queries.images)} queries from {queries.source}, but queries.* asks "
                                  f"for {q.num_generated} with seed {q.seed}; use another root (the models were "
                                  "measured on the stored queries).")
            return queries
        ddpm = load_ddpm_module(self.layout.full_dir / MODEL_FILE)
        queries = build_queries(QueryConfig(q.num_generated, q.seed, q.num_sampling_steps), ddpm, self.dataset)
        write_atomic(path, queries.save)
        return queries

    # ------------------------------------------------------------------ LDS retraining
    def write_subsets(self) -> None:
        """The M subsets (once; a rerun with other subset settings is refused, one with a larger M adds subsets)."""
        s = self.config.subsets
        if subsets_exist(self.root):
            manifest = read_subsets_manifest(self.root)
            wanted = {"num_subsets": s.num_subsets, "fraction": s.fraction, "seed": s.seed, "num_train": self.num_train}
            differing = {k: (manifest.get(k), v) for k, v in wanted.items() if manifest.get(k) != v}
            grows = set(differing) == {"num_subsets"} and s.num_subsets > manifest["num_subsets"]
            if differing and not grows:
                raise ConfigError(f"{self.root} holds subsets made with other settings {differing} (stored, wanted); "
                                  "use another root or delete its subsets/ and retrain/ folders (a larger "
                                  "--subsets.num_subsets alone adds subsets).")
            if not grows:
                return
        create_subsets(self.root, self.num_train, s.num_subsets, s.fraction, s.seed,
                       train_indices=list(self.dataset.indices))

    # ------------------------------------------------------------------ running jobs
    def run_jobs(self, jobs: list[TrainingJob], workers: int = 1, stage: str = "lds") -> None:
        """Train and measure every job that is not done (``lit_attr.evaluation.runner.run_jobs``)."""
        run_jobs(self, jobs, workers, stage)

    # ------------------------------------------------------------------ measurements
    def full_measurements(self) -> torch.Tensor:
        """(3, len(measurements), Q) of the full model (all draws, half 1, half 2)."""
        return self.run_measurements(self.layout.full_dir)

    def lds_measurements(self) -> torch.Tensor:
        """float64 (M, K, 3, len(measurements), Q), NaN where a model is missing."""
        r, s = self.config.retraining, self.config.subsets
        shape = (s.num_subsets, r.num_seeds, 3, len(self.config.true_measurements.measurements),
                 self.config.queries.num_generated)
        out = torch.full(shape, float("nan"), dtype=torch.float64)
        for job in lds_jobs(self.config, self.layout, self.num_train):
            if job_done(job.job):
                out[job.job.subset_index, job.job.slot] = self.run_measurements(job.job.run_dir)
        return out

    def run_measurements(self, run_dir: Path) -> torch.Tensor:
        """(3, len(measurements), Q) true measurements of the model in ``run_dir`` (all draws, half 1, half 2).

        Raises:
            ConfigError: if they were measured with other ``true_measurements`` settings.
        """
        stored = torch.load(run_dir / MEASUREMENTS_FILE, weights_only=True)
        t = self.config.true_measurements
        if stored["measurements"] != list(t.measurements) or stored["num_draws"] != t.num_draws or stored["seed"] != t.seed:
            raise ConfigError(f"{run_dir} was measured with other true_measurements settings; use another root.")
        return stored["values"]

    # ------------------------------------------------------------------ methods
    def method_dir(self, method: MethodConfig) -> Path:
        return self.layout.method_dir(method.name)

    def run_method(self, method: MethodConfig) -> None:
        """Score every training example for every variant of ``method`` (resumable)."""
        from lit_attr.methods.base import ScoringInputs
        from lit_attr.methods.registry import method_for

        out = self.method_dir(method)
        out.mkdir(parents=True, exist_ok=True)
        if not (out / QUERIES_FILE).exists():
            self.queries()
            shutil.copyfile(self.layout.queries_file, out / QUERIES_FILE)
        members = ensemble_jobs(self.config, self.layout, self.dataset.indices, method.ensemble_seeds)
        if members:
            self.run_jobs(members, stage=f"ensemble {method.name}")
        ensemble = {f"seed_{job.job.seed}": job.job.run_dir / MODEL_FILE for job in members}
        if method.ensemble_steps:
            rerun = trajectory_job(self.config, self.layout, self.dataset.indices)
            self.run_jobs([rerun], stage=f"checkpoints {method.name}")
            print(f"[checkpoints {method.name}] the rerun's final weights differ from the full model's by at most "
                  f"{max_weight_difference(rerun.job.run_dir / MODEL_FILE, self.layout.full_dir / MODEL_FILE):.2e}",
                  flush=True)
            ensemble |= {f"step_{n}": step_checkpoint(rerun.job.run_dir, n) for n in method.ensemble_steps}
        if method.ensemble_continuation:
            from lit_attr.attribution.continuation import ContinuationSettings, continuation_checkpoints

            full = self.layout.full_dir / MODEL_FILE
            settings = ContinuationSettings(steps=tuple(method.ensemble_continuation), lr=method.continuation_lr)
            paths = continuation_checkpoints(load_ddpm_module(full), self.dataset, str(full), settings,
                                             self.layout.continuation_dir(method.name))
            ensemble |= {f"continued_{n}": path for n, path in zip(settings.steps, paths)}
        inputs = ScoringInputs(checkpoint=self.layout.full_dir / MODEL_FILE, output_dir=out,
                               curvature_dir=self.layout.curvature_dir, data=self.data_settings(),
                               queries=self.config.queries, dataset=self.dataset,
                               query_images=lambda: self.queries().images,
                               ensemble=ensemble)
        method_for(method).score(inputs)

    def score_sets(self, method: MethodConfig) -> list[ScoreSet]:
        """The scores of a finished method for each reported number of draws."""
        from lit_attr.methods.registry import method_for

        return method_for(method).score_sets(self.method_dir(method))

    # ------------------------------------------------------------------ removal
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
        self.layout.config_file.write_text(text)

    def link_reused(self) -> None:
        """Symlink ``full/``, ``queries.pt``, ``methods/``, ``curvature/`` and ``ensemble/`` from ``config.reuse``
        (once)."""
        if self.config.reuse is None:
            return
        source = Path(self.config.reuse).expanduser().resolve()
        if not (BenchmarkLayout(source).full_dir / DONE_FILE).exists():
            raise ConfigError(f"reuse={self.config.reuse}: no finished full model there; run that benchmark first.")
        if source == self.root.resolve():
            raise ConfigError("reuse must name another benchmark root than root.")
        self.root.mkdir(parents=True, exist_ok=True)
        for name in REUSABLE:
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


def max_weight_difference(checkpoint_a: Path, checkpoint_b: Path) -> float:
    """The largest absolute difference between the weights of two checkpoints of the same architecture (0 when a
    rerun with the same seed reproduced the run exactly)."""
    a = torch.load(checkpoint_a, map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(checkpoint_b, map_location="cpu", weights_only=True)["state_dict"]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())
