"""Kill-and-resume of training is bit-identical to an uninterrupted run; checkpoints refuse another U-Net."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import RandomSampler

from lit_attr.data.datamodules import DiffusionDataModule
from lit_attr.data.resumable import ResumableRandomSampler
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.unet import UNetConfig, tiny_unet_config
from lit_attr.errors import CheckpointError

MAX_STEPS = 7
BATCH_SIZE = 700  # 1797 digits: 3 batches per epoch (700, 700, 397), so 7 steps cross two epoch ends


class SimulatedKill(Exception):
    """Raised right after the checkpoint of a step is written, like a SIGKILL before the next step."""


class KillAfterStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise SimulatedKill


def fit(root, seed, callbacks=(), ckpt_path=None, unet=None, dropout=0.1, example_keyed=False):
    """Train the tiny U-Net (dropout on, so its masks must be resumed too) to MAX_STEPS steps."""
    torch.set_num_threads(1)
    L.seed_everything(seed)
    module = DDPMModule(unet=unet or UNetConfig(**{**vars(tiny_unet_config()), "dropout": dropout}), ema_decay=0.9)
    trainer = L.Trainer(max_steps=MAX_STEPS, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks),
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    trainer.fit(module, DiffusionDataModule(batch_size=BATCH_SIZE, example_keyed=example_keyed), ckpt_path=ckpt_path)
    return module


def checkpointing(root):
    return ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=1, save_top_k=0, save_last=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return fit(tmp_path_factory.mktemp("uninterrupted"), seed=0).state_dict()


@pytest.mark.parametrize("kill_step", [3, 4], ids=["at-epoch-end", "mid-epoch"])
def test_kill_and_resume_is_bit_identical(uninterrupted, tmp_path, kill_step):
    with pytest.raises(SimulatedKill):
        fit(tmp_path, seed=0, callbacks=[checkpointing(tmp_path), KillAfterStep(kill_step)])
    # another seed in the resumed process: every random state must come from the checkpoint
    resumed = fit(tmp_path, seed=123, callbacks=[checkpointing(tmp_path)],
                  ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt")).state_dict()
    assert resumed.keys() == uninterrupted.keys()
    differing = [name for name, value in uninterrupted.items() if not torch.equal(resumed[name], value)]
    assert not differing, f"{len(differing)} tensors differ after resume, e.g. {differing[:3]}"


def test_example_keyed_kill_and_resume_is_bit_identical(tmp_path):
    """``--data.example_keyed``: the keyed order and draws resume mid-epoch from the checkpointed epoch seed."""
    uninterrupted = fit(tmp_path / "whole", seed=0, example_keyed=True).state_dict()
    with pytest.raises(SimulatedKill):
        fit(tmp_path, seed=0, callbacks=[checkpointing(tmp_path), KillAfterStep(4)], example_keyed=True)
    resumed = fit(tmp_path, seed=123, callbacks=[checkpointing(tmp_path)], example_keyed=True,
                  ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt")).state_dict()
    assert all(torch.equal(resumed[name], value) for name, value in uninterrupted.items())


def test_resume_into_another_architecture_is_refused(tmp_path):
    with pytest.raises(SimulatedKill):
        fit(tmp_path, seed=0, callbacks=[checkpointing(tmp_path), KillAfterStep(2)])
    wider = UNetConfig(block_out_channels=(32, 64))
    with pytest.raises(CheckpointError, match=r"unet.block_out_channels: checkpoint \[16, 32\], config \[32, 64\]"):
        fit(tmp_path, seed=0, unet=wider, ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"))


def test_resumable_sampler_draws_the_orders_of_random_sampler():
    """Uninterrupted runs are unchanged: the same global draw and permutation as shuffle=True."""
    torch.manual_seed(5)
    expected = [list(RandomSampler(range(10))) for _ in range(3)]
    torch.manual_seed(5)
    sampler = ResumableRandomSampler(10)
    assert [list(sampler) for _ in range(3)] == expected
    sampler.resume_from(sampler.epoch_seed, start=4)
    state = torch.get_rng_state()
    assert list(sampler) == expected[2][4:]
    assert torch.equal(torch.get_rng_state(), state)  # a resumed epoch draws nothing from the global generator
