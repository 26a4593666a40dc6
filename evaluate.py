"""Evaluate attribution methods with the LDS and retraining benchmarks (section 4 of the paper).

    python evaluate.py run --config configs/lds/digits.yaml          # everything, resumable
    python evaluate.py retrain --config configs/lds/digits.yaml --start 0 --count 16   # one share of the models
    python evaluate.py report --config configs/lds/digits.yaml       # tables and plots from what is done

Rerun any command to resume: finished models and scores are skipped. Errors are one ``error:`` line
with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from jsonargparse import ActionConfigFile, ArgumentParser

from lit_attr.cli_errors import OneLineArgumentParser, run_cli
from lit_attr.constants import DONE_FILE, FULL_DIR
from lit_attr.errors import ConfigError
from lit_attr.evaluation.config import BenchmarkConfig
from lit_attr.evaluation.job_share import JobShare


def _benchmark_parser(description: str) -> ArgumentParser:
    parser = OneLineArgumentParser(description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="Benchmark YAML (configs/lds/*.yaml).")
    parser.add_class_arguments(BenchmarkConfig, nested_key=None, as_group=False)
    return parser


def build_parser() -> ArgumentParser:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], env_prefix="LIT_ATTR")
    commands = parser.add_subcommands(dest="command")
    commands.add_subcommand("run", _benchmark_parser("All stages: full model, subsets, retraining, scoring, report."))
    retrain = _benchmark_parser("Train and measure a share of the models (for several processes or cluster jobs).")
    retrain.add_argument("--stage", choices=["lds", "removal"], default="lds", help="Which models.")
    retrain.add_argument("--start", type=int, default=0, help="First model of the share (position in the full list).")
    retrain.add_argument("--count", type=int | None, default=None, help="Models in the share (None: all from start).")
    retrain.add_argument("--worker", type=int, default=0, help="This worker (0-based) of --num_workers.")
    retrain.add_argument("--num_workers", type=int, default=1, help="Workers splitting the pending models.")
    commands.add_subcommand("retrain", retrain)
    commands.add_subcommand("report", _benchmark_parser("Compute and write the results of the finished stages."))
    return parser


def benchmark_config(namespace) -> BenchmarkConfig:
    """The ``BenchmarkConfig`` of a parsed (and instantiated) subcommand namespace."""
    fields = BenchmarkConfig.__dataclass_fields__
    return BenchmarkConfig(**{name: namespace[name] for name in fields if name in namespace})


def subparser(parser: ArgumentParser, command: str) -> ArgumentParser:
    """The parser of one subcommand (to dump its resolved settings)."""
    return parser._subcommands_action._name_parser_map[command]


def resolved_config_text(parser: ArgumentParser, args) -> str:
    """The YAML of a parsed subcommand as the root's ``config.yaml`` keeps it, ``None`` values included: the
    workers and the probes reload it, and a dropped ``null`` (``extra_seed_subsets: null``: every subset gets
    every seed) would come back as the field's default."""
    return parser.dump(args, skip_validation=True, skip_unset=False)


def _quiet_lightning() -> None:
    """One line per trained model instead of Lightning's per-run banners (warnings still show)."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*module.s. in eval mode at the start of training.*")


def main(argv: list[str] | None = None) -> int:
    _quiet_lightning()
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args[args.command]
    config = benchmark_config(parser.instantiate(args)[args.command])
    return COMMANDS[args.command](config, sub, subparser(parser, args.command))


def run(config: BenchmarkConfig, args, parser: ArgumentParser) -> int:
    from lit_attr.evaluation.campaign import Benchmark

    start = time.perf_counter()
    bench = Benchmark(config)
    bench.save_config(resolved_config_text(parser, args))
    workers = config.retraining.workers
    bench.link_reused()
    bench.run_jobs(stage_jobs(bench, "full"), stage="full")
    bench.queries()
    bench.write_subsets()
    bench.run_jobs(stage_jobs(bench, "lds"), workers, stage="lds")
    for method in config.methods:
        bench.run_method(method)
    bench.run_jobs(stage_jobs(bench, "removal"), workers, stage="removal")
    paths = _write_report(bench)
    print(f"Benchmark finished in {(time.perf_counter() - start) / 60:.1f} min; results: "
          + ", ".join(str(p) for p in paths.values()))
    return 0


def retrain(config: BenchmarkConfig, args, parser: ArgumentParser) -> int:
    from lit_attr.evaluation.campaign import Benchmark

    share = JobShare(args.start, args.count, args.worker, args.num_workers)
    bench = Benchmark(config)
    if not (bench.root / FULL_DIR / DONE_FILE).exists():
        raise ConfigError("the full model is not trained yet; run `evaluate.py run` first (or its full-model stage).")
    bench.write_subsets()
    stage = f"{args.stage} worker {args.worker}" if args.num_workers > 1 else args.stage
    bench.run_jobs(share.select(stage_jobs(bench, args.stage)), workers=1, stage=stage)
    return 0


def stage_jobs(bench, stage: str) -> list:
    """The models of one stage (``full``, ``lds`` or ``removal``) of ``bench``, in plan order
    (``lit_attr.evaluation.plans``)."""
    from lit_attr.evaluation import plans

    if stage == "full":
        return [plans.full_job(bench.config, bench.layout, bench.dataset.indices)]
    if stage == "lds":
        return plans.lds_jobs(bench.config, bench.layout, bench.num_train)
    return plans.removal_jobs(bench.config, bench.layout, bench.dataset.indices, bench.removal_scores)


def report(config: BenchmarkConfig, args, parser: ArgumentParser) -> int:
    from lit_attr.evaluation.campaign import Benchmark

    if not (Path(config.root) / FULL_DIR / DONE_FILE).exists():
        raise ConfigError(f"no finished benchmark stage under --root {config.root} (no full/done.json); run "
                          "`python evaluate.py run --config <the same config>` first, or pass the --root of that run.")
    paths = _write_report(Benchmark(config))
    print("results: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _write_report(bench) -> dict:
    """Compute the results of the finished stages, write them and print the tables; returns the paths."""
    from lit_attr.evaluation.report import markdown, write_results
    from lit_attr.evaluation.results import BenchmarkOutcomes, compute_results

    outcomes = BenchmarkOutcomes.load(bench)
    results = compute_results(bench, outcomes)
    paths = write_results(bench, results, outcomes)
    print(markdown(results))
    return paths


COMMANDS = {"run": run, "retrain": retrain, "report": report}

if __name__ == "__main__":
    sys.exit(run_cli(main))
