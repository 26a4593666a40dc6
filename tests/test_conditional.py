"""Class-conditional U-Nets (num_class_embeds): the label is part of each training example and query."""

import lightning as L
import numpy as np
import pytest
import torch

from callbacks.curvature import KFACCallback
from callbacks.score_writer import ScoreWriter
from lit_attr.attribution.gradients import per_example_loss_gradients
from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.run import run_attribution
from lit_attr.curvature import select_kfac_modules
from lit_attr.data.datamodules import AttributionDataModule, DiffusionDataModule
from lit_attr.data.index_files import write_index_file
from lit_attr.ddpm_module import DDPMModule
from lit_attr.diffusion.draws import draw_for_batch
from lit_attr.diffusion.loss import loss_per_example, unet_eps_model
from lit_attr.diffusion.unet import UNetConfig
from lit_attr.errors import ConfigError
from lit_attr.measurements import MeasurementSpec, measurement_rows
from lit_attr.storage import load_scores
from tests.cases import single_thread  # noqa: F401
from tests.reference import assert_close_report, loop_per_example_gradients

CONDITIONAL = UNetConfig(block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=4, num_class_embeds=10)


def conditional_ddpm(**kwargs) -> DDPMModule:
    torch.manual_seed(0)
    return DDPMModule(unet=CONDITIONAL, diffusion={"num_timesteps": 50}, **kwargs)


def test_the_label_changes_loss_and_measurement():
    module = conditional_ddpm().eval()
    eps_model, schedule = unet_eps_model(module.unet), module.schedule
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    t, noise = draw_for_batch(torch.arange(2), 4, (1, 8, 8), 50, seed=0, stream="query")
    with torch.no_grad():
        at_3 = loss_per_example(eps_model, schedule, x0, t, noise, torch.tensor([3, 3]))
        at_7 = loss_per_example(eps_model, schedule, x0, t, noise, torch.tensor([7, 3]))
        rows = measurement_rows(MeasurementSpec("loss", 4), eps_model, schedule, x0, torch.arange(2),
                                labels=torch.tensor([7, 3]))
    assert (at_3[0] - at_7[0]).abs() > 1e-4 and at_3[1] == at_7[1]
    torch.testing.assert_close(rows.view(2, 4).sum(1), at_7)


def test_per_example_gradients_use_each_examples_label():
    module = conditional_ddpm().double().eval()
    unet, schedule = module.unet, module.schedule
    modules = select_kfac_modules(unet)
    eps_model = unet_eps_model(unet)
    x0 = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([0, 5, 9])
    t, noise = draw_for_batch(torch.arange(3), 2, (1, 8, 8), 50, seed=0, stream="train")
    grads = per_example_loss_gradients(eps_model, schedule, modules, x0, t, noise.double(), unet, labels)
    expected = loop_per_example_gradients(modules, lambda b: loss_per_example(
        eps_model, schedule, x0[b:b + 1], t[b:b + 1], noise[b:b + 1].double(), labels[b:b + 1]).sum(), 3)
    for name, g in expected.items():
        assert_close_report(grads[name], g, rtol=1e-8, atol=1e-11 * g.abs().max().item(), name=name)


def test_missing_or_out_of_range_labels_are_refused():
    module = conditional_ddpm()
    batch = {"image": torch.zeros(2, 1, 8, 8), "index": torch.arange(2)}
    with pytest.raises(ConfigError, match="class-conditional.*labels"):
        module.training_step(batch, 0)
    with pytest.raises(ConfigError, match="num_class_embeds"):
        module.training_step({**batch, "label": torch.tensor([3, 12])}, 0)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("conditional")
    module = conditional_ddpm(ema_decay=0.0)
    trainer = L.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=root)
    trainer.fit(module, DiffusionDataModule(batch_size=64))
    trainer.save_checkpoint(root / "model.ckpt")
    write_index_file(root / "subset.txt", range(64))
    return root


def attribute(root, out, **kwargs):
    module = InfluenceModule(checkpoint=str(root / "model.ckpt"), output_dir=str(out), num_draws=2, top_k=2,
                             measurement={"num_draws": 4}, damping=1e-4, **kwargs)
    trainer = L.Trainer(accelerator="cpu", inference_mode=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[KFACCallback(num_draws=1, progressbar=False), ScoreWriter()])
    run_attribution(trainer, module, AttributionDataModule(subset_file=str(root / "subset.txt"), batch_size=32))
    return module, load_scores(out)


def test_conditional_attribution_end_to_end(conditional_run):
    module, scores = attribute(conditional_run, conditional_run / "generated",
                               queries={"num_generated": 3, "num_sampling_steps": 5})
    assert scores.shape == (64, 3) and np.isfinite(scores).all()
    assert module.queries.labels.tolist() == [0, 1, 2]
    _, other = attribute(conditional_run, conditional_run / "relabelled",
                                  queries={"num_generated": 3, "num_sampling_steps": 5, "labels": [0, 1, 5]})
    np.testing.assert_allclose(other[:, :2], scores[:, :2], rtol=1e-4, atol=1e-6 * np.abs(scores).max())
    assert np.abs(other[:, 2] - scores[:, 2]).max() > 1e-3 * np.abs(scores).max()  # query 2: sampled and measured at class 5
    own, _ = attribute(conditional_run, conditional_run / "train", queries={"train_indices": [3, 10]})
    assert own.queries.labels.tolist() == [3, 0]  # digits 3 and 10 are a 3 and a 0
