"""``--data.example_keyed``: common random numbers per example for LDS retraining.

Two runs with the same seed on overlapping subsets must train their shared examples in the same relative
order and with the same (timestep, noise) draws, whatever else is in the subset; a killed run resumes
bit-identically; the default order is untouched (tests/test_training_resume.py)."""

import lightning as L
import numpy as np
import pytest
import torch

from lit_attr.data.datamodules import DiffusionDataModule
from lit_attr.data.resumable import ResumableRandomSampler
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.draws import draws_from_keys
from lit_attr.diffusion.unet import tiny_unet_config
from lit_attr.errors import ConfigError
from lit_attr.seeding import keyed_seeds


def epochs(keys, seed, num_epochs=3):
    torch.manual_seed(seed)
    sampler = ResumableRandomSampler(len(keys), keys)
    return sampler, [[(keys[p], key) for p, key in sampler] for _ in range(num_epochs)]


def test_shared_examples_keep_their_relative_order_and_draw_keys_across_subsets():
    full = list(range(40))
    subset_a, subset_b = full[::2] + [1, 3], [k for k in full if k % 3]
    _, full_epochs = epochs(full, seed=7)
    for subset in (subset_a, subset_b):
        _, sub_epochs = epochs(subset, seed=7)
        for full_epoch, sub_epoch in zip(full_epochs, sub_epochs):
            assert sub_epoch == [pair for pair in full_epoch if pair[0] in set(subset)]
    assert [k for k, _ in full_epochs[0]] != [k for k, _ in full_epochs[1]]  # a new order every epoch
    assert sorted(k for k, _ in full_epochs[0]) == full
    assert len({key for _, key in full_epochs[0]}) == len(full)  # one draw key per example
    _, other_seed = epochs(full, seed=8)
    assert other_seed[0] != full_epochs[0]


def test_keyed_sampler_resumes_mid_epoch_without_touching_the_global_generator():
    sampler, expected = epochs(list(range(10, 30)), seed=3)
    sampler.resume_from(sampler.epoch_seed, start=5)
    state = torch.get_rng_state()
    assert [(10 + p, key) for p, key in sampler] == expected[-1][5:]
    assert torch.equal(torch.get_rng_state(), state)


def test_keyed_seeds_of_a_key_do_not_depend_on_the_other_keys():
    many = keyed_seeds(11, np.arange(100), "s")
    np.testing.assert_array_equal(keyed_seeds(11, [42, 7], "s"), many[[42, 7]])
    assert (many >= 0).all() and len(set(many.tolist())) == 100
    assert not np.array_equal(keyed_seeds(11, [42], "t"), many[[42]])


def test_draws_from_keys_depend_on_the_key_alone():
    t, noise = draws_from_keys(torch.tensor([5, 9, 5]), (1, 4, 4), 1000)
    assert t.shape == (3,) and noise.shape == (3, 1, 4, 4) and 0 <= t.min() and t.max() < 1000
    assert t[0] == t[2] and torch.equal(noise[0], noise[2]) and not torch.equal(noise[0], noise[1])
    t_one, noise_one = draws_from_keys(torch.tensor([9]), (1, 4, 4), 1000)
    assert t_one[0] == t[1] and torch.equal(noise_one[0], noise[1])


def test_training_step_uses_each_examples_keyed_draw(monkeypatch):
    """The loss of a batch with draw keys is the loss of the keyed draws, not of the global generator's."""
    torch.manual_seed(0)
    module = DDPMModule(unet=tiny_unet_config())
    module.log = lambda *args, **kwargs: None
    batch = {"index": torch.tensor([3, 4]), "image": torch.rand(2, 1, 8, 8) * 2 - 1, "draw_key": torch.tensor([1, 2])}
    t, noise = draws_from_keys(batch["draw_key"], (1, 8, 8), module.schedule.num_timesteps)
    x_t = module.schedule.q_sample(batch["image"], t, noise)
    expected = (module.unet(x_t, t).sample - noise).pow(2).mean()
    torch.manual_seed(123)  # the global generator must not matter
    torch.testing.assert_close(module.training_step(batch, 0), expected)


def fit_digits(root, subset_file, seed=0):
    torch.set_num_threads(1)
    L.seed_everything(seed)
    module = DDPMModule(unet=tiny_unet_config())
    seen = []
    module.on_train_batch_start = lambda batch, batch_idx: seen.extend(zip(batch["index"].tolist(),
                                                                           batch["draw_key"].tolist()))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)
    data = DiffusionDataModule(batch_size=64, subset_file=str(subset_file), example_keyed=True)
    trainer.fit(module, data)
    return seen


def test_two_subset_runs_with_one_seed_share_the_draw_keys_of_their_shared_examples(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(map(str, range(0, 400))))
    (tmp_path / "b.txt").write_text("\n".join(map(str, range(200, 600))))
    seen_a, seen_b = fit_digits(tmp_path, tmp_path / "a.txt"), fit_digits(tmp_path, tmp_path / "b.txt")
    assert len(seen_a) == len(seen_b) == 128
    shared = set(range(200, 400))
    in_a, in_b = [pair for pair in seen_a if pair[0] in shared], [pair for pair in seen_b if pair[0] in shared]
    common = {index for index, _ in in_a} & {index for index, _ in in_b}
    assert len(common) > 10
    # the shared examples both runs reached: same relative order, same draw keys
    assert [pair for pair in in_a if pair[0] in common] == [pair for pair in in_b if pair[0] in common]


def test_example_keyed_refuses_several_processes():
    data = DiffusionDataModule(example_keyed=True)
    data.trainer = type("T", (), {"world_size": 2})()
    with pytest.raises(ConfigError, match="example_keyed"):
        data.train_dataloader()
