"""DDPMModule: training, checkpoint round trip (with EMA), pipeline export/import, CLI configs."""


import pytest
import torch

from lit_attr.cli import train_cli
from lit_attr.ddpm_config import OptimizerConfig, warmup_cosine
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.unet import UNetConfig, tiny_unet_config
from lit_attr.pipeline_io import export_pipeline, import_pipeline, load_ddpm_module
from tests.helpers import ROOT, load_benchmark_script, run_script, tiny_config, train_tiny_ddpm


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_bad_unet_config_names_the_flag():
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNetConfig(block_out_channels=(12, 32), norm_num_groups=8)
    with pytest.raises(ValueError, match="down_block_types"):
        UNetConfig(block_out_channels=(16, 32, 64))
    with pytest.raises(ValueError, match="warmup_fraction"):
        OptimizerConfig(warmup_fraction=1.5)


def test_init_seed_fixes_the_weights_and_leaves_the_global_stream_alone():
    def build(global_seed, init_seed):
        torch.manual_seed(global_seed)
        module = DDPMModule(unet=tiny_unet_config(), init_seed=init_seed)
        return module.unet.state_dict(), torch.rand(3)

    shared_a, after_a = build(0, init_seed=7)
    shared_b, after_b = build(1, init_seed=7)
    own_a, _ = build(0, init_seed=None)
    own_b, _ = build(1, init_seed=None)
    assert all(torch.equal(shared_a[k], shared_b[k]) for k in shared_a)  # same weights whatever the global seed
    assert not torch.equal(own_a["conv_in.weight"], own_b["conv_in.weight"])  # without it, the seed decides
    assert not torch.equal(shared_a["conv_in.weight"], build(0, init_seed=8)[0]["conv_in.weight"])
    torch.manual_seed(0)
    assert torch.equal(after_a, torch.rand(3))  # the global stream is not consumed by the initialisation
    assert not torch.equal(after_a, after_b)
    with pytest.raises(ValueError, match="init_seed"):
        DDPMModule(unet=tiny_unet_config(), init_seed=-1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny DDPM trained for a few steps, with its checkpoint."""
    tmp = tmp_path_factory.mktemp("fit")
    module, trainer = train_tiny_ddpm(tmp, max_steps=3, ema_decay=0.9, batch_size=32, gradient_clip_val=1.0)
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, ckpt


def test_fit_updates_weights_and_ema(trained):
    module, _ = trained
    fresh = DDPMModule(unet=tiny_unet_config())
    raw = dict(module.unet.named_parameters())
    ema = dict(module.ema_unet.named_parameters())
    name = "conv_in.weight"
    assert not torch.equal(raw[name], fresh.unet.state_dict()[name])
    assert not torch.equal(raw[name], ema[name])  # EMA lags the raw weights


def test_checkpoint_round_trip_includes_ema(trained):
    module, ckpt = trained
    loaded = load_ddpm_module(ckpt)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert loaded.ema_decay == 0.9


def test_pipeline_export_import_round_trip(trained, tmp_path):
    module, _ = trained
    export_pipeline(module, tmp_path / "pipe")
    imported = load_ddpm_module(tmp_path / "pipe")
    assert imported.image_shape == (1, 8, 8)
    for key, value in module.ema_unet.state_dict().items():
        torch.testing.assert_close(imported.attribution_unet.state_dict()[key], value)
    a = module.generate(2, seed=1, num_steps=5).images
    b = imported.generate(2, seed=1, num_steps=5).images
    torch.testing.assert_close(a, b)
    assert import_pipeline(tmp_path / "pipe").ema_decay == 0.0


def test_sampling_shapes_and_determinism(trained):
    module, _ = trained
    r1 = module.generate(3, seed=0, num_steps=4, record_trajectory=True)
    r2 = module.generate(3, seed=0, num_steps=4)
    assert r1.images.shape == (3, 1, 8, 8) and r1.trajectory.shape == (5, 3, 1, 8, 8)
    torch.testing.assert_close(r1.images, r2.images)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="Lightning checkpoint"):
        load_ddpm_module(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_train_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli(args=["fit", "--config", str(ROOT / "configs" / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    assert "block_out_channels" in capsys.readouterr().out


def test_train_cli_fits_checkpoints_resumes_and_writes_samples(tmp_path):
    config = tiny_config(tmp_path)
    proc = run_script("train.py", "fit", "--config", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "samples.png").stat().st_size > 0
    assert (run / "pipeline" / "unet" / "config.json").exists()
    assert list((run / "lightning_logs").rglob("events.out.tfevents*"))  # logs follow the run folder
    proc = run_script("train.py", "fit", "--config", str(config), "--trainer.max_steps", "6", "--ckpt_path", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 6


def test_train_cli_ddp_on_cpu(tmp_path):
    config = tiny_config(tmp_path)
    proc = run_script("train.py", "fit", "--config", str(config), "--trainer.devices", "2", "--trainer.strategy", "ddp",
                      "--trainer.max_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


@pytest.mark.parametrize("recipe", ["long_shared_init", "long_b512"])
def test_probe_recipes_are_train_configs(recipe, tmp_path, capsys):
    """benchmarks/probe_recipe.py's recipes are ``train.py`` configs: init_seed and batch size reach the CLI."""
    import yaml

    probe = load_benchmark_script("probe_recipe")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(probe.recipe_config("digits", probe.RECIPES[recipe])))
    with pytest.raises(SystemExit):
        train_cli(args=["fit", "--config", str(path), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["init_seed"] == (0 if recipe == "long_shared_init" else None)
    assert printed["data"]["batch_size"] == (512 if recipe == "long_b512" else 128)
