"""KFACCallback after fit: factors saved with the model and data hashes; reload and refit rules."""

import lightning as L
import torch

from callbacks.curvature import KFACCallback
from lit_attr.curvature.factors_io import load_factors
from lit_attr.data.datamodules import DiffusionDataModule
from lit_attr.diffusion.draws import DrawScheme
from lit_attr.data.index_files import write_index_file
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.unet import tiny_unet_config
from lit_attr.fingerprints import model_hash


def test_factors_after_fit(tmp_path):
    write_index_file(tmp_path / "subset.txt", range(40))
    L.seed_everything(0)
    module = DDPMModule(unet=tiny_unet_config(), ema_decay=0.5)
    path = tmp_path / "kfac.safetensors"
    callback = KFACCallback(num_draws=2, factors_path=str(path), progressbar=False)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[callback])
    trainer.fit(module, DiffusionDataModule(batch_size=16, subset_file=str(tmp_path / "subset.txt")))
    factors = load_factors(path)
    assert factors.num_rows == 40 * 2
    assert factors.metadata["model_hash"] == model_hash(module.ema_unet)
    assert factors.metadata["data"]["num_examples"] == 40
    name, (a, g) = next(iter(factors.factors.items()))
    assert torch.allclose(a, a.T) and torch.linalg.eigvalsh(g).min() > -1e-9
    same = callback.settings(seed=0, scheme=callback.resolved_scheme(DrawScheme.INDEPENDENT))
    assert callback.load(path, {**same, "model_hash": factors.metadata["model_hash"],
                                "data": factors.metadata["data"]}) is not None
    assert callback.load(path, {**same, "model_hash": "another model", "data": factors.metadata["data"]}) is None
