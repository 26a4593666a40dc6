"""Latent diffusion: a small AutoencoderKL trained on digits, a DDPM on its cached latents, attribution
of the U-Net with the loss on the latents, decoded figures, and LDMPipeline export/import."""

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import LDMPipeline

from callbacks.curvature import KFACCallback
from callbacks.score_writer import ScoreWriter
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.run import run_attribution
from lit_attr.data.datamodules import AttributionDataModule, DiffusionDataModule
from lit_attr.data.datasets import load_digits_dataset
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.loss import unet_eps_model
from lit_attr.diffusion.unet import UNetConfig
from lit_attr.checkpoints import check_resume
from lit_attr.errors import CheckpointError, ConfigError
from lit_attr.latent import cache
from lit_attr.latent.autoencoder import decode, encode_mean, load_vae
from lit_attr.latent.vae_module import VAEModule
from lit_attr.pipeline_io import export_pipeline, import_pipeline, load_ddpm_module
from lit_attr.storage import load_scores
from tests.cases import single_thread  # noqa: F401
from tests.helpers import ROOT, run_script

LATENT_UNET = UNetConfig(block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8)


def fit(module, root, max_steps, batch_size=128):
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)
    trainer.fit(module, DiffusionDataModule(batch_size=batch_size))
    return trainer


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """A small AutoencoderKL (8x8 digits -> 2x4x4 latents) trained for 120 steps and exported."""
    root = tmp_path_factory.mktemp("vae")
    L.seed_everything(0)
    module = VAEModule(vae={"block_out_channels": [16, 32], "latent_channels": 2, "norm_num_groups": 8})
    trainer = fit(module, root, max_steps=120)
    return module.export(root / "vae", trainer.train_dataloader.dataset)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, vae_folder):
    """A latent DDPM trained for 30 steps on the cached latents; its checkpoint."""
    root = tmp_path_factory.mktemp("latent")
    L.seed_everything(0)
    module = DDPMModule(vae=str(vae_folder), unet=LATENT_UNET, ema_decay=0.0)
    fit(module, root, max_steps=30)
    trainer = L.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(root / "model.ckpt")
    return root


@torch.no_grad()
def test_encode_decode_round_trip_and_scaling(vae_folder):
    vae = load_vae(vae_folder)
    digits = load_digits_dataset()
    images = torch.stack([digits[i]["image"] for i in range(64)])
    latents = encode_mean(vae, images)
    assert latents.shape == (64, 2, 4, 4)
    scale = vae.config.scaling_factor
    torch.testing.assert_close(latents, vae.encode(images).latent_dist.mean * scale)
    torch.testing.assert_close(decode(vae, latents), vae.decode(latents / scale).sample.clamp(-1, 1))
    assert (decode(vae, latents) - images).pow(2).mean() < 0.3 * images.var()  # a trained autoencoder
    assert cache.encode_dataset(vae, digits).std().item() == pytest.approx(1.0, abs=1e-3)  # calibrated scaling


def test_training_latents_are_encoded_once_and_reused(vae_folder, tmp_path, monkeypatch):
    vae, digits = load_vae(vae_folder), load_digits_dataset()
    calls = []
    real = cache.encode_dataset
    monkeypatch.setattr(cache, "encode_dataset", lambda *a: calls.append(1) or real(*a))
    first = cache.load_or_encode_latents(vae, digits, tmp_path / "latents.pt")
    second = cache.load_or_encode_latents(vae, digits, tmp_path / "latents.pt")
    assert len(calls) == 1 and torch.equal(first, second) and first.shape == (1797, 2, 4, 4)
    with torch.no_grad():
        vae.decoder.conv_out.bias.add_(1.0)  # another VAE: the cache is not reused
        vae.encoder.conv_out.bias.add_(1.0)
    cache.load_or_encode_latents(vae, digits, tmp_path / "latents.pt")
    assert len(calls) == 2


def test_latent_ddpm_trains_on_the_cached_latents(latent_run, vae_folder):
    assert (latent_run / "latents" / "train_latents.pt").is_file()
    module = load_ddpm_module(latent_run / "model.ckpt")
    assert module.is_latent and module.image_shape == (1, 8, 8) and module.model_shape == (2, 4, 4)
    assert module.unet.config.in_channels == 2 and module.unet.config.sample_size == 4
    assert module.hparams["vae_config"]["latent_channels"] == 2  # the checkpoint rebuilds the VAE without the folder
    for key, value in load_vae(vae_folder).state_dict().items():
        torch.testing.assert_close(module.vae.state_dict()[key], value)
    assert not any(p.requires_grad for p in module.vae.parameters())


def test_resume_checks_latent_space_and_model_class(latent_run, vae_folder, tmp_path):
    """train.py --ckpt_path: a latent checkpoint resumes its latent config only; a VAE config refuses a DDPM checkpoint
    and the reverse; a VAE checkpoint resumes a VAE config of the same architecture only."""
    path = latent_run / "model.ckpt"
    stored = torch.load(path, weights_only=True)["hyper_parameters"]
    pixel_config = {"unet": stored["unet"], "diffusion": stored["diffusion"]}
    check_resume(path, DDPMModule, {**pixel_config, "vae": str(vae_folder)})
    with pytest.raises(CheckpointError, match="latent: checkpoint True, config False"):
        check_resume(path, DDPMModule, pixel_config)
    with pytest.raises(CheckpointError, match="is not a VAEModule checkpoint"):
        check_resume(path, VAEModule, {})
    vae = VAEModule(vae={"block_out_channels": [16, 32], "latent_channels": 2, "norm_num_groups": 8})
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": vae.state_dict(),
                "hyper_parameters": dict(vae.hparams)}, tmp_path / "vae.ckpt")
    check_resume(tmp_path / "vae.ckpt", VAEModule, {"vae": dict(vae.hparams["vae"]), "lr": 0.1})
    with pytest.raises(CheckpointError, match=r"vae.latent_channels: checkpoint 2, config 4"):
        check_resume(tmp_path / "vae.ckpt", VAEModule, {"vae": {**vae.hparams["vae"], "latent_channels": 4}})
    with pytest.raises(CheckpointError, match="VAEModule checkpoint"):
        check_resume(tmp_path / "vae.ckpt", DDPMModule, pixel_config)


def attribute(latent_run, out, **kwargs):
    module = InfluenceModule(checkpoint=str(latent_run / "model.ckpt"), output_dir=str(out), top_k=3, **kwargs)
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[KFACCallback(num_draws=2, progressbar=False), ScoreWriter()])
    run_attribution(trainer, module, AttributionDataModule(batch_size=128))
    return module, load_scores(out)


def test_a_training_latent_as_query_ranks_itself_in_its_top_percent(latent_run):
    queries = [5, 500, 1234]
    module, scores = attribute(latent_run, latent_run / "self", queries={"train_indices": queries}, num_draws=32,
                               measurement={"num_draws": 64}, damping=1e-8)
    assert scores.shape == (1797, 3) and (latent_run / "self" / "latents.pt").is_file()
    latents = torch.load(latent_run / "self" / "latents.pt", weights_only=True)["latents"]
    assert torch.equal(module.queries.images, latents[queries])  # the query is the cached training latent
    for q, index in enumerate(queries):
        rank = int((scores[:, q] > scores[index, q]).sum())
        assert rank < 0.01 * len(scores), f"training latent {index} ranks {rank} among its own positive influences"


def test_generated_latent_queries_are_decoded_for_the_figures(latent_run):
    out = latent_run / "generated"
    module, scores = attribute(latent_run, out, queries={"num_generated": 2, "num_sampling_steps": 5}, num_draws=2,
                               measurement={"num_draws": 4}, damping=1e-4)
    assert scores.shape == (1797, 2) and np.isfinite(scores).all()
    queries = module.queries
    assert queries.images.shape == (2, 2, 4, 4) and queries.display.shape == (2, 1, 8, 8)
    torch.testing.assert_close(queries.display, module.ddpm.to_pixels(queries.images))
    assert (out / "influence.png").stat().st_size > 0 and (out / "queries.png").stat().st_size > 0


def test_latent_pipeline_exports_and_imports_with_its_vae(latent_run, tmp_path):
    module = load_ddpm_module(latent_run / "model.ckpt")
    folder = export_pipeline(module, tmp_path / "pipe")
    assert (folder / "vqvae" / "config.json").is_file()
    imported = import_pipeline(folder)
    assert imported.is_latent and imported.image_shape == (1, 8, 8)
    x, t = torch.randn(2, 2, 4, 4), torch.tensor([10, 900])
    with torch.no_grad():
        torch.testing.assert_close(unet_eps_model(imported.unet)(x, t), unet_eps_model(module.attribution_unet)(x, t))
    torch.testing.assert_close(imported.to_pixels(x), module.to_pixels(x))
    torch.testing.assert_close(imported.generate(2, num_steps=3).images, module.generate(2, num_steps=3).images)
    images = LDMPipeline.from_pretrained(str(folder))(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 8, 8, 1)  # diffusers runs the exported folder too


def test_missing_vae_and_mismatched_data_are_refused(vae_folder, tmp_path):
    with pytest.raises(ConfigError, match="--model.vae .*no AutoencoderKL.*Nothing is downloaded"):
        DDPMModule(vae=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"1-channel.*\(3, 32, 32\)"):
        DDPMModule(vae=str(vae_folder), image_shape=(3, 32, 32))


def test_train_py_trains_the_vae_and_the_latent_ddpm_from_their_configs(tmp_path):
    vae_config = tmp_path / "vae.yaml"
    vae_config.write_text((ROOT / "configs" / "vae_digits.yaml").read_text().replace("runs/vae_digits", str(tmp_path / "v")))
    proc = run_script("train.py", "fit", "--config", str(vae_config), "--trainer.max_steps", "3", "--trainer.logger", "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_vae(tmp_path / "v" / "vae").config.latent_channels == 2
    assert (tmp_path / "v" / "reconstructions.png").is_file()
    latent_config = tmp_path / "latent.yaml"
    latent_config.write_text((ROOT / "configs" / "latent_digits.yaml").read_text()
                             .replace("runs/vae_digits", str(tmp_path / "v")).replace("runs/latent_digits", str(tmp_path / "l"))
                             .replace("num_samples: 64", "num_samples: 4\n        final_num_sampling_steps: 5"))
    proc = run_script("train.py", "fit", "--config", str(latent_config), "--trainer.max_steps", "3", "--trainer.logger",
                      "false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "l" / "pipeline" / "vqvae" / "config.json").is_file()
    assert (tmp_path / "l" / "latents" / "train_latents.pt").is_file() and (tmp_path / "l" / "samples.png").is_file()
    assert import_pipeline(tmp_path / "l" / "pipeline").model_shape == (2, 4, 4)
