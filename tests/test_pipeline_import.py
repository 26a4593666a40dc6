"""Bring your own diffusers model: faithful import (every U-Net setting, the scheduler's betas,
parameterisation, variance and clipping) checked against diffusers itself; refusals."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from safetensors.torch import load_file, save_file

from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.loss import loss_per_draw, unet_eps_model
from lit_attr.diffusion.unet import UNetConfig, build_unet
from lit_attr.errors import ConfigError
from lit_attr.measurements import MeasurementSpec, measurement_rows
from lit_attr.pipeline_io import export_pipeline, import_pipeline, load_ddpm_module
from tests.cases import single_thread  # noqa: F401

CIFAR_DDPM = dict(  # google/ddpm-cifar10-32's U-Net settings, width reduced (128-256-256-256 there) and 16x16
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32, 32, 32), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, norm_num_groups=8,
    mid_block_scale_factor=1, center_input_sample=False, act_fn="silu",
)
TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)


def seeded_unet(**config) -> UNet2DModel:
    torch.manual_seed(0)
    unet = UNet2DModel(**config).eval()
    with torch.no_grad():  # non-zero everywhere (diffusers zero-initialises some output convolutions)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return unet


def save_pipeline(tmp_path, unet, **scheduler_kwargs):
    folder = tmp_path / "pipe"
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(**scheduler_kwargs)).save_pretrained(str(folder))
    return folder


def check_inputs(unet, rows=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    c, size = unet.config.in_channels, unet.config.sample_size
    return torch.randn(rows, c, size, size, generator=gen), torch.tensor([3, 500, 999])[:rows]


@torch.no_grad()
def test_cifar10_ddpm_config_is_used_as_saved(tmp_path):
    saved = seeded_unet(**CIFAR_DDPM)
    module = load_ddpm_module(save_pipeline(tmp_path, saved))
    x, t = check_inputs(saved)
    expected = saved(x, t).sample
    torch.testing.assert_close(unet_eps_model(module.attribution_unet)(x, t), expected, rtol=0, atol=0)
    assert module.image_shape == (3, 16, 16)
    # the defect this guards against: rebuilding from the seven UNetConfig fields changes the network
    names = UNetConfig.__dataclass_fields__
    rebuilt = build_unet(UNetConfig(**{k: v for k, v in saved.config.items() if k in names}), (3, 16, 16))
    rebuilt.load_state_dict(saved.state_dict())
    assert (rebuilt.eval()(x, t).sample - expected).abs().max() > 1e-2


@pytest.mark.parametrize("field", [{"center_input_sample": True}, {"flip_sin_to_cos": False}, {"freq_shift": 1},
                                   {"act_fn": "mish"}, {"num_class_embeds": 3}])
@torch.no_grad()
def test_single_unet_settings_survive_import(tmp_path, field):
    saved = seeded_unet(**TINY, **field)
    module = import_pipeline(save_pipeline(tmp_path, saved))
    x, t = check_inputs(saved)
    labels = torch.tensor([0, 2, 1]) if "num_class_embeds" in field else None
    torch.testing.assert_close(unet_eps_model(module.attribution_unet)(x, t, labels),
                               saved(x, t, class_labels=labels).sample, rtol=0, atol=0)
    assert module.hparams["diffusers_unet_config"][next(iter(field))] == next(iter(field.values()))


@pytest.mark.parametrize("schedule", [{"beta_schedule": "linear"}, {"beta_schedule": "scaled_linear", "beta_start": 8.5e-4,
                                      "beta_end": 0.012}, {"beta_schedule": "squaredcos_cap_v2"},
                                      {"beta_schedule": "sigmoid"}, {"beta_schedule": "laplace"},
                                      {"trained_betas": torch.linspace(1e-3, 0.05, 50).tolist()}])
@torch.no_grad()
def test_every_beta_schedule_drives_the_loss_and_sampler(tmp_path, schedule):
    timesteps = 50
    reference = DDPMScheduler(num_train_timesteps=timesteps, **schedule)
    saved = seeded_unet(**TINY)
    module = import_pipeline(save_pipeline(tmp_path, saved, num_train_timesteps=timesteps, **schedule))
    ours = module.schedule
    torch.testing.assert_close(ours.betas_f64, reference.betas.double(), rtol=1e-6, atol=0)
    x0, t = check_inputs(saved, seed=2)
    t = t % timesteps
    noise = torch.randn_like(x0)
    x_t = reference.add_noise(x0, noise, t)
    expected = (saved(x_t, t).sample - noise).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(loss_per_draw(unet_eps_model(module.attribution_unet), ours, x0, t, noise), expected,
                               rtol=1e-5, atol=1e-6)
    assert_sampler_step_matches(module, reference, x_t)


def in_float64(scheduler: DDPMScheduler) -> DDPMScheduler:
    """The scheduler with its (float32) betas' alphas kept in float64: diffusers' float32 ``1 - abar_t / abar_{t-1}``
    loses ~4 digits when beta ~ 1e-4, which would hide real differences."""
    scheduler.betas = scheduler.betas.double()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def assert_sampler_step_matches(module, reference, x_t, steps=(49, 20, 1, 0)):
    """One ancestral step of lit-attr (mean + sigma z) equals ``DDPMScheduler.step`` with the same z."""
    reference = in_float64(reference)
    schedule, eps_model = module.schedule, unet_eps_model(module.attribution_unet)
    for t in steps:
        t_batch = torch.full((len(x_t),), t)
        output = eps_model(x_t, t_batch)
        expected = reference.step(output, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(7))
        _, _, variance = schedule.reverse_step(t_batch, t_batch - 1)
        ours = schedule.reverse_mean(output, x_t, t_batch, t_batch - 1)
        if t > 0:
            ours = ours + variance.sqrt().float().view(-1, 1, 1, 1) * z
        torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5, msg=f"step from t={t}")


@pytest.mark.parametrize("settings", [
    {"prediction_type": "v_prediction"}, {"prediction_type": "sample"}, {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log"}, {"clip_sample": True, "clip_sample_range": 0.5},
    {"prediction_type": "v_prediction", "clip_sample": True, "variance_type": "fixed_large"},
])
@torch.no_grad()
def test_parameterisation_variance_and_clipping_match_diffusers(tmp_path, settings):
    timesteps = 50
    reference = DDPMScheduler(num_train_timesteps=timesteps, **settings)
    saved = seeded_unet(**TINY)
    module = import_pipeline(save_pipeline(tmp_path, saved, num_train_timesteps=timesteps, **settings))
    x0, _ = check_inputs(saved, seed=3)
    x_t = reference.add_noise(x0, torch.randn_like(x0), torch.full((3,), 30))
    assert_sampler_step_matches(module, reference, 3.0 * x_t)  # 3x: some x0 predictions need the clamp


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@torch.no_grad()
def test_loss_and_elbo_of_each_prediction_type_match_references(prediction_type):
    """Loss: the error of diffusers' training target (eps, ``get_velocity``, x0). ELBO: Ho et al. eq. (5) in eps terms,
    ``w_t ||eps - eps_hat||^2`` with eps_hat from diffusers' ``pred_original_sample``."""
    timesteps = 50
    reference = DDPMScheduler(num_train_timesteps=timesteps, prediction_type=prediction_type, clip_sample=False)
    module = DDPMModule(image_shape=(1, 8, 8), diffusers_unet_config=dict(seeded_unet(**TINY).config), ema_decay=0.0,
                        diffusion={"num_timesteps": timesteps, "prediction_type": prediction_type})
    module.adopt_unet(seeded_unet(**TINY))
    eps_model, schedule = unet_eps_model(module.unet), module.schedule
    x0, t = check_inputs(module.unet, seed=4)
    t = t % timesteps
    noise = torch.randn_like(x0)
    x_t = reference.add_noise(x0, noise, t)
    target = {"epsilon": noise, "sample": x0, "v_prediction": reference.get_velocity(x0, noise, t)}[prediction_type]
    output = eps_model(x_t, t)
    torch.testing.assert_close(loss_per_draw(eps_model, schedule, x0, t, noise),
                               (output - target).pow(2).flatten(1).mean(1), rtol=1e-5, atol=1e-6)
    reference, output64, x_t64 = in_float64(reference), output.double(), x_t.double()  # eps_hat divides by sqrt(1 - abar)
    abar = reference.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = torch.stack([reference.step(output64[i:i + 1], int(t[i]), x_t64[i:i + 1]).pred_original_sample[0]
                          for i in range(3)])
    eps_hat = (x_t64 - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
    eps_weights = DDPMModule(diffusion={"num_timesteps": timesteps}).schedule.elbo_weights()
    expected = (eps_weights[t] * (noise.double() - eps_hat).pow(2).flatten(1).sum(1))
    ours = schedule.elbo_weights()[t] * (output - target).double().pow(2).flatten(1).sum(1)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_training_and_measurements_run_for_other_prediction_types(tmp_path, prediction_type):
    module = DDPMModule(image_shape=(1, 8, 8), unet=UNetConfig(block_out_channels=(8, 16), norm_num_groups=4,
                        attention_head_dim=4), diffusion={"num_timesteps": 20, "prediction_type": prediction_type})
    loss = module.training_step({"image": torch.rand(4, 1, 8, 8) * 2 - 1, "index": torch.arange(4)}, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.unet.conv_in.weight.grad.abs().sum() > 0
    imported = import_pipeline(export_pipeline(module, tmp_path / "pipe"))
    assert imported.schedule.prediction_type == prediction_type
    result = imported.generate(2, num_steps=5, record_trajectory=True)
    spec = MeasurementSpec("trajectory_logprob", 3)
    rows = measurement_rows(spec, unet_eps_model(imported.unet), imported.schedule, result.images, torch.arange(2),
                            result.trajectory, result.timesteps)
    assert rows.shape == (6,) and torch.isfinite(rows).all()


def test_exported_scheduler_matches_our_sampler(tmp_path):
    """Our models never clip x0 while sampling; the exported DDPMScheduler says so (diffusers' default clips)."""
    module = DDPMModule(unet=UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4),
                        diffusion={"num_timesteps": 20, "beta_schedule": "squaredcos_cap_v2"})
    folder = export_pipeline(module, tmp_path / "pipe")
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["clip_sample"] is False and config["beta_schedule"] == "squaredcos_cap_v2"
    imported = import_pipeline(folder)
    assert imported.diffusion_config == module.diffusion_config
    torch.testing.assert_close(imported.generate(2, num_steps=4).images, module.generate(2, num_steps=4).images)


@pytest.mark.parametrize("scheduler, message", [
    ({"thresholding": True}, "thresholding"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
    ({"variance_type": "learned_range"}, "learned"),
    ({"beta_end": 1.5}, r"unsupported scheduler setting: beta_end must be in \(0, 1\)"),
])
def test_unsupported_scheduler_settings_are_refused(tmp_path, scheduler, message):
    with pytest.raises(ConfigError, match=message):
        import_pipeline(save_pipeline(tmp_path, seeded_unet(**TINY), **scheduler))


def test_other_scheduler_families_learned_variance_and_partial_weights_are_refused(tmp_path):
    folder = save_pipeline(tmp_path, seeded_unet(**TINY))
    config_path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "_class_name": "EulerDiscreteScheduler"}))
    with pytest.raises(ConfigError, match="EulerDiscreteScheduler"):
        import_pipeline(folder)
    config_path.write_text(json.dumps(config))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    save_file({k: v for k, v in state.items() if not k.startswith("conv_out")}, weights)
    with pytest.raises(ConfigError, match="do not match"):
        import_pipeline(folder)
    learned = save_pipeline(tmp_path / "learned", seeded_unet(**{**TINY, "out_channels": 2}))
    with pytest.raises(ConfigError, match="output channels"):
        import_pipeline(learned)


def test_a_model_that_changes_after_loading_is_refused(tmp_path, monkeypatch):
    """The fixed-input check: here the old defect (rebuilding from the seven UNetConfig fields) is reintroduced."""
    folder = save_pipeline(tmp_path, seeded_unet(**{**TINY, "flip_sin_to_cos": False, "freq_shift": 1}))

    def rebuild_from_unet_config(self, unet):
        names = UNetConfig.__dataclass_fields__
        self.unet = build_unet(UNetConfig(**{k: v for k, v in unet.config.items() if k in names}), self.image_shape)
        self.unet.load_state_dict(unet.state_dict())
        self.ema_unet = self.unet

    monkeypatch.setattr(DDPMModule, "adopt_unet", rebuild_from_unet_config)
    with pytest.raises(ConfigError, match="other outputs than the saved U-Net"):
        import_pipeline(folder)


def test_training_data_of_another_shape_is_refused(tmp_path):
    import lightning as L

    from lit_attr.attribution.influence import InfluenceModule
    from lit_attr.data.datamodules import AttributionDataModule

    folder = save_pipeline(tmp_path, seeded_unet(**CIFAR_DDPM))
    module = InfluenceModule(checkpoint=str(folder), output_dir=str(tmp_path / "attr"))
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"\(3, 16, 16\).*\(1, 8, 8\).*--data"):
        trainer.predict(module, datamodule=AttributionDataModule(dataset="digits"))
    assert not (tmp_path / "attr" / "scores.npy").exists()


def test_a_ddim_scheduler_config_gives_the_same_forward_process(tmp_path):
    """LDM-style folders ship a DDIMScheduler: its betas, T and clipping are read like a DDPMScheduler's."""
    from diffusers import DDIMScheduler

    settings = dict(num_train_timesteps=40, beta_schedule="scaled_linear", beta_start=8.5e-4, beta_end=0.012)
    folder = tmp_path / "pipe"
    DDPMPipeline(unet=seeded_unet(**TINY), scheduler=DDIMScheduler(**settings)).save_pretrained(str(folder))
    module = import_pipeline(folder)
    reference = DDIMScheduler(**settings)
    torch.testing.assert_close(module.schedule.betas_f64, reference.betas.double(), rtol=1e-6, atol=0)
    assert module.schedule.clip_sample is True and module.schedule.variance_type == "fixed_small"
