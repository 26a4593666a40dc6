"""Which training recipe makes an LDS benchmark that can tell methods apart?

    python benchmarks/probe_recipe.py --dataset digits --recipes short long long_ema
    python benchmarks/probe_recipe.py --dataset patches --recipes long --subsets 12

The LDS of any method is bounded by how reproducible the retrained models' measurements are: if
two seeds of the same subset disagree, the targets are mostly training noise. For each recipe
(steps, learning rate, EMA or final weights, batch size) this runs a small LDS benchmark through
``evaluate.py run`` (M subsets, each trained with two seeds under the ``common`` protocol, one
root per recipe under ``--root``) and prints, per recipe: the oracle (exact retraining: seed 0
predicting seed 1, eq. 13 with the retrained model as the predictor), the per-model training
time, and the LDS of K-FAC influence (S = 32) and of pixel cosine on the same subsets. Rerun the
same command to resume.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import yaml

ROOT = Path(__file__).resolve().parents[1]

class Recipe(NamedTuple):
    """One training recipe: full-data steps (each half subset trains half as many), peak learning rate,
    EMA decay (0: final weights), batch size, the U-Net's ``block_out_channels`` and whether each example's
    order and draws are keyed by its index (``--data.example_keyed``); ``init_seed`` (``--model.init_seed``) gives
    every model (the full one, every subset and seed) the same initial weights, so seeds differ only in
    minibatch order, timesteps and noise."""

    steps: int
    lr: float
    ema: float
    batch_size: int
    channels: tuple[int, int] = (16, 32)
    example_keyed: bool = False
    init_seed: int | None = None


RECIPES = {
    "short_ema": Recipe(600, 3e-3, 0.99, 128),  # the benchmark recipe before this probe
    "short": Recipe(600, 3e-3, 0.0, 128),
    "long": Recipe(1000, 3e-3, 0.0, 128),  # the benchmark's recipe (configs/lds/digits_train.yaml)
    "long_ema": Recipe(1000, 3e-3, 0.99, 128),
    "longer": Recipe(2000, 3e-3, 0.0, 128),  # twice the steps: closer to memorising each subset
    "long_lowlr": Recipe(1000, 1e-3, 0.0, 128),
    "long_b64": Recipe(1000, 3e-3, 0.0, 64),
    "long_b512": Recipe(1000, 3e-3, 0.0, 512),  # 4x the batch at the same steps: less SGD noise, 4x the epochs
    "long_wide": Recipe(1000, 3e-3, 0.0, 128, channels=(32, 64)),  # 4x the parameters (0.7M)
    "long_keyed": Recipe(1000, 3e-3, 0.0, 128, example_keyed=True),  # common random numbers per example
    "long_shared_init": Recipe(1000, 3e-3, 0.0, 128, init_seed=0),  # one initialisation for every model
    "long_ema995": Recipe(1000, 3e-3, 0.995, 128),  # the benchmark's recipe, EMA weights attributed and retrained
    "quickstart": Recipe(1500, 2e-3, 0.995, 128),  # configs/digits.yaml's (configs/lds/quickstart_train.yaml)
}


def recipe_config(dataset: str, recipe: Recipe) -> dict:
    """A ``train.py`` config (the digits LDS recipe with the probed settings)."""
    config = yaml.safe_load((ROOT / "configs" / "lds" / "digits_train.yaml").read_text())
    config["model"]["optimizer"]["lr"] = recipe.lr
    config["model"]["ema_decay"] = recipe.ema
    config["model"]["unet"]["block_out_channels"] = list(recipe.channels)
    config["data"] = {"dataset": dataset, "batch_size": recipe.batch_size, "num_workers": 0}
    if recipe.example_keyed:
        config["data"]["example_keyed"] = True
    if recipe.init_seed is not None:
        config["model"]["init_seed"] = recipe.init_seed
    return config


def benchmark_config(root: Path, recipe_path: Path, steps: int, subsets: int, queries: int) -> dict:
    kfac = {"draws_per_group": 16, "num_groups": 2, "report_draws": [32], "measurements": ["loss"],
            "query_num_draws": 256, "dampings": [1e-8]}
    return {
        "root": str(root),
        "subsets": {"num_subsets": subsets, "fraction": 0.5, "seed": 0},
        "retraining": {"recipe": str(recipe_path), "full_steps": steps, "protocol": "common", "base_seed": 0,
                       "num_seeds": 2, "extra_seed_subsets": subsets, "workers": 2},
        "true_measurements": {"measurements": ["loss"], "num_draws": 512, "seed": 1000},
        "queries": {"num_generated": queries, "seed": 0, "num_sampling_steps": None},
        "methods": [{"name": "kfac_stratified", "draw_scheme": "stratified", **kfac},
                    {"name": "kfac_shared_stratified", "draw_scheme": "shared_stratified", **kfac},
                    {"name": "pixel", "kind": "pixel"}],
        "removal": {"queries": []},
    }


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    recipe = RECIPES[name]
    root = Path(args.root) / args.dataset / name
    root.mkdir(parents=True, exist_ok=True)
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe_config(args.dataset, recipe)))
    config_path = root / "benchmark.yaml"
    config_path.write_text(yaml.safe_dump(benchmark_config(root, recipe_path, recipe.steps, args.subsets,
                                                           args.queries)))
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(ROOT / "evaluate.py"), "run", "--config", str(config_path)], cwd=ROOT)
    if code:
        raise SystemExit(f"recipe {name}: evaluate.py exited with {code}")
    results = json.loads((root / "results.json").read_text())
    times = [json.loads(p.read_text()).get("fit_seconds", float("nan")) for p in root.glob("retrain/*/*/done.json")]
    lds = {(r["method"], r["target"]): r for r in results["lds"] if r["default_damping"]}
    diag = results["diagnostics"]["loss"]
    return {"recipe": name, "steps": recipe.steps, "lr": recipe.lr, "ema": recipe.ema,
            "batch_size": recipe.batch_size, "channels": list(recipe.channels),
            "oracle": diag.get("oracle_lds"), "mc_reliability": diag["measurement_mc_reliability"],
            "fit_seconds": sum(times) / max(1, len(times)), "wall_min": (time.perf_counter() - start) / 60,
            **{m: lds[(m, "loss")] for m in ("kfac_stratified", "kfac_shared_stratified", "pixel")
               if (m, "loss") in lds}}


def _pm(stat: dict | None) -> str:
    return "n/a" if not stat else f"{stat['mean']:.3f} ± {stat['stderr']:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "patches", "photos"])
    parser.add_argument("--recipes", nargs="+", default=["short_ema", "long", "long_ema"], choices=sorted(RECIPES))
    parser.add_argument("--subsets", type=int, default=12, help="M subsets, each trained with two seeds.")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--root", default="runs/probe_recipe")
    args = parser.parse_args()
    rows = [run_recipe(name, args) for name in args.recipes]
    print(f"\nRecipe probe on {args.dataset}: {args.subsets} subsets x 2 seeds (common), {args.queries} queries, "
          "loss target; K-FAC S = 32, damping 1e-8")
    print("| recipe | full steps | lr | EMA | batch | channels | oracle | K-FAC stratified | K-FAC shared+stratified | pixel | "
          "s / subset model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['steps']} | {r['lr']:g} | {r['ema']:g} | {r['batch_size']} | {r['channels']} | {_pm(r['oracle'])} | "
              f"{_pm(r.get('kfac_stratified'))} | {_pm(r.get('kfac_shared_stratified'))} | {_pm(r.get('pixel'))} | "
              f"{r['fit_seconds']:.0f} |")
    out = Path(args.root) / args.dataset / "probe.json"
    out.write_text(json.dumps(rows, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
