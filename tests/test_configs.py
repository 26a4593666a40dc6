"""Every YAML under ``configs/`` parses against the CLI that reads it (train.py, attribute.py or evaluate.py).

A config is routed by where it lives: ``configs/attribute/`` and ``*/attribute.yaml`` go to attribute.py,
``configs/lds/`` benchmark configs to evaluate.py, and everything else (including the benchmarks'
``*_train.yaml`` recipes) to train.py. ``--print_config`` checks every key and type without loading data
or checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ROOT

CONFIGS = sorted(str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml"))


def cli_of(config: str) -> str:
    """Which entry point reads ``configs/<config>``."""
    path = Path(config)
    if path.parts[0] == "attribute" or path.name == "attribute.yaml":
        return "attribute.py"
    if path.parts[0] == "lds" and not path.name.endswith("_train.yaml"):
        return "evaluate.py"
    return "train.py"


def _printed_config(cli: type, *args: object, argv: list[str], capsys: pytest.CaptureFixture, **kwargs: object) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli(*args, args=[*argv, "--print_config"], **kwargs)
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_configs_are_found_for_every_cli():
    assert {cli_of(c) for c in CONFIGS} == {"train.py", "attribute.py", "evaluate.py"}
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses_against_its_cli(config, capsys):
    path = str(ROOT / "configs" / config)
    cli = cli_of(config)
    if cli == "train.py":
        from lit_attr.cli import train_cli

        printed = _printed_config(train_cli, argv=["fit", "--config", path], capsys=capsys)
        assert "max_steps" in printed and "class_path" in printed
    elif cli == "attribute.py":
        from lit_attr.attribution.influence import InfluenceModule
        from lit_attr.cli import AttributeCLI
        from lit_attr.data.datamodules import AttributionDataModule

        printed = _printed_config(AttributeCLI, InfluenceModule, AttributionDataModule, argv=["--config", path],
                                  capsys=capsys)
        assert "KFACCallback" in printed and "damping" in printed
    else:
        import evaluate

        parser = evaluate.build_parser()
        args = parser.parse_args(["report", "--config", path])
        bench = evaluate.benchmark_config(parser.instantiate(args)["report"])
        assert bench.methods and (ROOT / bench.retraining.recipe).is_file()
        assert cli_of(str(Path(bench.retraining.recipe).relative_to("configs"))) == "train.py"


def test_quickstart_benchmark_recipe_trains_like_the_quickstart():
    """configs/lds/quickstart_train.yaml is configs/digits.yaml's training (model, optimizer, EMA, data, steps, clip),
    so the LDS root it builds measures the shipped config on the Quickstart's own kind of model."""
    import yaml

    quickstart = yaml.safe_load((ROOT / "configs" / "digits.yaml").read_text())
    recipe = yaml.safe_load((ROOT / "configs" / "lds" / "quickstart_train.yaml").read_text())
    benchmark = yaml.safe_load((ROOT / "configs" / "lds" / "quickstart_digits.yaml").read_text())
    logging_only = {"loss_buckets"}  # the per-timestep loss curves of TensorBoard, off in benchmark runs
    assert {k: v for k, v in recipe["model"].items() if k not in logging_only} == quickstart["model"]
    assert recipe["data"] == quickstart["data"]
    for key in ("max_steps", "gradient_clip_val"):
        assert recipe["trainer"][key] == quickstart["trainer"][key]
    assert benchmark["retraining"]["recipe"] == "configs/lds/quickstart_train.yaml"
    assert benchmark["retraining"]["full_steps"] == quickstart["trainer"]["max_steps"]
