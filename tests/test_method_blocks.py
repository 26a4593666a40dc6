"""A benchmark ``methods:`` entry written as ``attribute.py``'s config blocks (``attribute_config:`` / ``model:``,
``lit_attr.evaluation.method_blocks``) scores what ``attribute.py`` scores with that config."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from attribute import main as attribute_main
from lit_attr.errors import ConfigError
from lit_attr.evaluation.config import MethodConfig
from lit_attr.storage import load_scores
from tests.helpers import ROOT

SMOKE = ROOT / "configs" / "lds" / "smoke.yaml"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The smoke benchmark's full model (trained, seconds)."""
    from evaluate import benchmark_config, build_parser, stage_jobs
    from lit_attr.evaluation.campaign import Benchmark

    root = tmp_path_factory.mktemp("blocks")
    parser = build_parser()
    parsed = parser.parse_args(["run", "--config", str(SMOKE), f"--root={root / 'bench'}"])
    bench = Benchmark(benchmark_config(parser.instantiate(parsed)["run"]))
    bench.run_jobs(stage_jobs(bench, "full"))
    return bench


def attribute_config(bench, path) -> str:
    """``configs/tiny/attribute.yaml`` on the benchmark's full model, all its data and its query settings, with a
    seed and draw scheme of its own (so the curvature's seed and scheme follow the module's, as in attribute.py)."""
    config = yaml.safe_load((ROOT / "configs" / "tiny" / "attribute.yaml").read_text())
    q = bench.config.queries
    config["model"].update(checkpoint=str(bench.root / "full" / "model.ckpt"), output_dir=str(path.parent / "out"),
                           seed=3, draw_scheme="stratified",
                           queries={"num_generated": q.num_generated, "seed": q.seed,
                                    "num_sampling_steps": q.num_sampling_steps})
    config["data"]["subset_file"] = None
    path.write_text(yaml.safe_dump(config))
    return str(path)


def benchmark_entry(bench, entry: dict) -> MethodConfig:
    """The ``methods:`` entry ``entry`` as ``evaluate.py`` reads it from a benchmark YAML."""
    from evaluate import benchmark_config, build_parser

    config = yaml.safe_load(SMOKE.read_text())
    config["methods"] = [entry]
    config["removal"] = {}
    path = bench.root.parent / f"{entry['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    parser = build_parser()
    parsed = parser.parse_args(["run", "--config", str(path), f"--root={bench.root}"])
    (method,) = benchmark_config(parser.instantiate(parsed)["run"]).methods
    return method


@pytest.mark.parametrize("variant", ["kfac", "trak", "kfac_relative"])
def test_attribute_config_entry_gives_attribute_py_scores(bench, tmp_path, variant, capsys):
    """The same file through ``attribute.py --config`` and as the entry ``{name, attribute_config}``: equal scores.

    Both score in float32 with the same draws, curvature and int8 query rows; attribute.py contracts layer by layer,
    the benchmark flattened gradients, so only the float32 summation order differs (measured: max |difference|
    9e-7 of the largest score). The entry takes data.batch_size (32) from the file: with the benchmark's own 64
    the curvature sums run in another order and a few int8 roundings of the query rows flip (6e-5)."""
    method = variant.split("_")[0]
    path = attribute_config(bench, tmp_path / "attribute.yaml")
    extra = {"trak": ["--model.projection_dim=64"], "kfac_relative": ["--model.relative_influence=true"]}
    attribute_main(["--config", path, f"--method={method}", *extra.get(variant, [])])
    expected = load_scores(tmp_path / "out")
    entry = {"name": f"mine_{variant}", "attribute_config": path, "method": method}
    if method == "trak":
        entry["model"] = {"projection_dim": 64}
    if variant == "kfac_relative":  # each row divided by its gradient norm, in both
        entry["model"] = {"relative_influence": True}
    config = benchmark_entry(bench, entry)
    assert config.relative_influence == (variant == "kfac_relative")
    assert "leaving out what the benchmark provides" in capsys.readouterr().out
    assert (config.draws_per_group, config.num_groups, config.report_draws, config.seed) == (4, 1, [4], 3)
    assert config.batch_size == 32 and config.dampings == [1e-4]
    if method == "kfac":
        assert (config.curvature.seed, config.curvature.draw_scheme, config.curvature.num_draws) == (3, "stratified", 2)
    bench.run_method(config)
    (score_set,) = bench.score_sets(config)
    assert score_set.draws == 4 and score_set.half_a is None  # one group: no split-half reliability
    got = score_set.scores[:, 0, 0, :]
    assert got.shape == expected.shape == (bench.num_train, bench.config.queries.num_generated)

    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=5e-6 * np.abs(expected).max())


def test_unknown_keys_and_settings_outside_the_block_are_refused(tmp_path):
    """Through evaluate.py, as one error line: tests/error_catalogue.py (eval-attribute-config-key)."""
    with pytest.raises(ConfigError, match=r"^Method 'x': model.dampnig is not a setting of attribute.py's model "
                                          r"block .*; remove it.$"):
        MethodConfig(name="x", model={"dampnig": 1e-3})
    config = yaml.safe_load((ROOT / "configs" / "tiny" / "attribute.yaml").read_text())
    config["trainer"]["callbacks"][0]["init_args"]["num_drwas"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="KFACCallback init_args has key 'num_drwas'.*; remove it.$"):
        MethodConfig(name="x", attribute_config=str(tmp_path / "bad.yaml"))
    with pytest.raises(ConfigError, match="dampings comes from attribute_config / model; set it there"):
        MethodConfig(name="x", model={}, dampings=[1.0])
    with pytest.raises(ConfigError, match="method dtrak uses the squared output norm"):
        MethodConfig(name="x", method="dtrak", model={"measurement": {"measurement": "elbo"}})
    with pytest.raises(ConfigError, match="method 'ensemble' cannot be benchmarked.*ensemble_seeds"):
        MethodConfig(name="x", method="ensemble")
    with pytest.raises(ConfigError, match="attribute_config nowhere.yaml is not an attribute.py YAML file"):
        MethodConfig(name="x", attribute_config="nowhere.yaml")
    with pytest.raises(ConfigError, match="relative_influence divides by the norm of one S-draw gradient"):
        MethodConfig(name="x", relative_influence=True, num_groups=2, report_draws=[32])
    assert MethodConfig(name="x", model={"relative_influence": True}).relative_influence  # one group: carried over


def test_block_translation_follows_attribute_py_defaults_and_method_choice(capsys):
    digits = str(ROOT / "configs" / "attribute" / "digits.yaml")
    with pytest.warns(FutureWarning, match="loss_at_t100"):  # attribute.py's old spelling, normalised as there
        ekfac = MethodConfig(name="e", attribute_config=digits, method="ekfac",
                             model={"measurement": {"measurement": "loss_at_timestep", "timestep": 100}})
    assert ekfac.kind == "kfac" and ekfac.curvature.eigenvalue_correction and ekfac.measurements == ["loss_at_t100"]
    assert (ekfac.draws_per_group, ekfac.query_num_draws, ekfac.curvature.num_draws) == (32, 128, 16)
    assert (ekfac.ensemble_continuation, ekfac.continuation_lr) == ([100, 200, 300], None)  # its continuation:
    assert MethodConfig(name="q", attribute_config=digits, method="pixel").ensemble_continuation == []  # none for pixel
    with pytest.raises(ConfigError, match="continuation.seed cannot be benchmarked"):
        _block_with_continuation({"seed": 3})
    trak = MethodConfig(name="t", model={}, method="trak")  # attribute.py's TRAK defaults, not MethodConfig's
    assert (trak.kind, trak.dampings, trak.draws_per_group, trak.query_num_draws) == ("trak", [1e-9], 16, 64)
    assert MethodConfig(name="p", model={"num_draws": 4}, method="pixel").report_draws == [0]
    assert MethodConfig(name="k", model={"query_compression": "fp16"}).query_compression == "fp16"
    line = capsys.readouterr().out.splitlines()
    assert any("p: leaving out" in l and "model.num_draws" in l for l in line)


def _block_with_continuation(extra):
    """A MethodConfig from an attribute.py config whose ``continuation:`` block has ``extra`` settings."""
    import tempfile

    config = yaml.safe_load((ROOT / "configs" / "attribute" / "digits.yaml").read_text())
    config["continuation"] = {**config["continuation"], **extra}
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/attribute.yaml"
        with open(path, "w") as handle:
            yaml.safe_dump(config, handle)
        return MethodConfig(name="s", attribute_config=path)
