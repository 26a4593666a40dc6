"""Running a benchmark's training jobs: train, measure and mark each done, in this process or in workers.

A job (``lit_attr.evaluation.jobs.TrainingJob``) is trained with ``train.py``'s recipe
(``lit_attr.evaluation.training``), its queries' true measurements are saved beside the checkpoint
(``measurements.pt``), and ``done.json`` is written last. With ``workers > 1`` the jobs run in
``evaluate.py retrain --worker=w --num_workers=W`` subprocesses (one ``JobShare`` each).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lit_attr.constants import DONE_FILE, MEASUREMENTS_FILE
from lit_attr.errors import ConfigError
from lit_attr.evaluation.jobs import TrainingJob, job_done, mark_job_done
from lit_attr.evaluation.training import train_model
from lit_attr.evaluation.true_measurements import measure_queries
from lit_attr.storage import read_json

if TYPE_CHECKING:
    from lit_attr.evaluation.campaign import Benchmark

log = logging.getLogger(__name__)


def run_jobs(bench: Benchmark, jobs: list[TrainingJob], workers: int = 1, stage: str = "lds") -> None:
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
        _run_workers(bench.layout.config_file, stage, min(workers, len(pending)))
        still = [j.label for j in jobs if not job_done(j.job)]
        if still:
            raise RuntimeError(f"[{stage}] {len(still)} models failed (first: {still[:3]}); see the worker "
                               "output above, then rerun the same command to resume.")
        return
    start = time.perf_counter()
    for n, job in enumerate(pending, 1):
        if job_done(job.job):  # another process (a parallel `evaluate.py retrain` share) finished it meanwhile
            print(f"[{stage}] {n}/{len(pending)} {job.label}: done meanwhile by another process; skipped", flush=True)
            continue
        seconds = run_job(bench, job)
        elapsed = time.perf_counter() - start
        eta = elapsed / n * (len(pending) - n)
        print(f"[{stage}] {n}/{len(pending)} {job.label}: {seconds:.0f} s (elapsed {elapsed / 60:.1f} min, "
              f"ETA {eta / 60:.1f} min)", flush=True)


def run_job(bench: Benchmark, job: TrainingJob) -> float:
    """Train, measure and mark one job done; returns its wall time."""
    start = time.perf_counter()
    t = bench.config.true_measurements
    r = bench.config.retraining
    run = train_model(r.recipe, job.job.run_dir, job.steps, job.job.seed, job.job.indices_file, r.train_args,
                      save_steps=job.save_steps)
    values = measure_queries(run.module, bench.queries().images, t.measurements, t.num_draws, t.seed)
    torch.save({"values": values, "measurements": list(t.measurements), "num_draws": t.num_draws,
                "seed": t.seed}, job.job.run_dir / MEASUREMENTS_FILE)
    seconds = time.perf_counter() - start
    saved = {"save_steps": list(job.save_steps)} if job.save_steps else {}
    mark_job_done(job.job, {"steps": job.steps, "fit_seconds": round(run.fit_seconds, 1),
                            "seconds": round(seconds, 1), **saved})
    return seconds


def _run_workers(config: Path, stage: str, workers: int) -> None:
    """``evaluate.py retrain --worker=w --num_workers=W`` for each w, side by side, single-threaded each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = Path(__file__).resolve().parents[2] / "evaluate.py"
    procs = [subprocess.Popen([sys.executable, str(script), "retrain", "--config", str(config), "--stage", stage,
                               f"--worker={w}", f"--num_workers={workers}"], env=env)
             for w in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        log.error("Worker exit codes: %s", codes)
