"""The catalogue of bad inputs of train.py, attribute.py and evaluate.py and the one-line error each gives.

Every ``Case`` is run by ``tests/test_error_catalogue.py`` through the CLI entry points (all in
process, a representative set also as real subprocesses) and checked for the exit status, ONE
``error:`` line holding ``expect``, no traceback, and nothing complete-looking left behind.
``python -m tests.error_catalogue`` runs them all and rewrites ``docs/errors.md`` with the real messages.

Placeholders in arguments: ``{fixture}`` (shared files: a tiny trained checkpoint, configs, a finished
attribution run; ``build_fixture``) and ``{case}`` (an empty folder per case).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tests.helpers import ROOT, tiny_config, train_tiny_ddpm

TRAIN = ("train.py", "fit", "--config", "{fixture}/train.yaml", "--trainer.default_root_dir", "{case}/run")
ATTR = ("attribute.py", "--config", "{fixture}/attribute.yaml", "--model.output_dir", "{case}/attr",
        "--trainer.default_root_dir", "{case}/attr")
EVAL_RUN = ("evaluate.py", "run", "--config", "configs/lds/smoke.yaml", "--root", "{case}/bench")
EVAL_RETRAIN = ("evaluate.py", "retrain", "--config", "configs/lds/smoke.yaml", "--root", "{case}/bench")
EVAL_REPORT = ("evaluate.py", "report", "--config", "configs/lds/smoke.yaml", "--root", "{case}/bench")
NUM_TRAIN = 65
"""Training rows of the fixture's subset: a ragged last batch of one with --data.batch_size 64."""
COMPLETE_LOOKING = ("report.json", "report.md", "influence.png", "samples.png", "results.json", "results.md",
                    "done.json", "model.ckpt", "last.ckpt", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class Case:
    """One bad input: ``base + args`` run from the repository root must fail with ``expect`` in its error line."""

    id: str
    bad_input: str
    base: tuple[str, ...]
    args: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Callable[[Path, Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    status: int = 2
    keeps_previous_run: bool = False
    """The case folder held a finished run from before; it must be left intact (not checked for leftovers)."""
    real_cli: bool = False
    """Also run as a real subprocess (the representative set)."""

    def argv(self, fixture: Path, case_dir: Path) -> list[str]:
        return [arg.format(fixture=fixture, case=case_dir) for arg in (*self.base, *self.args)]

    @property
    def command(self) -> str:
        """The command as documented: the script, its subcommand and the case's own arguments."""
        head = [a for a in self.base[:2] if not a.startswith("--")]
        return " ".join([*head, *self.args]).replace("{fixture}/", "").replace("{case}/", "")


# ---------------------------------------------------------------------------------------------- setups

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _copy_finished(fixture: Path, case_dir: Path) -> Path:
    target = case_dir / "attr"
    shutil.copytree(fixture / "finished", target)
    return target


def zero_finished_scores(fixture: Path, case_dir: Path) -> None:
    scores = np.load(_copy_finished(fixture, case_dir) / "scores.npy", mmap_mode="r+")
    scores[:] = 0
    scores.flush()


def truncate_scores_of_interrupted_run(fixture: Path, case_dir: Path) -> None:
    run = _copy_finished(fixture, case_dir)
    metadata = json.loads((run / "metadata.json").read_text())
    (run / "metadata.json").write_text(json.dumps({**metadata, "finalized": False}))
    data = (run / "scores.npy").read_bytes()
    (run / "scores.npy").write_bytes(data[: len(data) // 2])


def corrupt_metadata(fixture: Path, case_dir: Path) -> None:
    run = _copy_finished(fixture, case_dir)
    (run / "metadata.json").write_text((run / "metadata.json").read_text()[:40])


def corrupt_queries(fixture: Path, case_dir: Path) -> None:
    run = _copy_finished(fixture, case_dir)
    (run / "queries.pt").write_bytes(b"not a torch file")


def nan_factors(fixture: Path, case_dir: Path) -> None:
    """Factors with a NaN but a valid checksum (as NaN activations would give): the eigh guard must catch them."""
    from lit_attr.curvature.factors_io import load_factors, save_factors

    run = _copy_finished(fixture, case_dir)
    path = run / "factors" / "factors.safetensors"
    factors = load_factors(path)
    first = next(iter(factors.factors))
    factors.factors[first][0][0, 0] = float("nan")
    save_factors(path, factors)
    _unfinish(run)


def truncated_factors(fixture: Path, case_dir: Path) -> None:
    run = _copy_finished(fixture, case_dir)
    path = run / "factors" / "factors.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    _unfinish(run)


def _unfinish(run: Path) -> None:
    """Forget the scored rows, so the rerun needs the curvature."""
    done = np.load(run / "scores_done.npy", mmap_mode="r+")
    done[:] = 0
    done.flush()
    metadata = json.loads((run / "metadata.json").read_text())
    metadata.pop("checksums", None)
    (run / "metadata.json").write_text(json.dumps({**metadata, "finalized": False}))
    for name in ("report.json", "report.md", "influence.png"):
        (run / name).unlink()


def nan_weights_checkpoint(fixture: Path, case_dir: Path) -> None:
    checkpoint = torch.load(fixture / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["state_dict"]["ema_unet.conv_in.weight"][0, 0, 0, 0] = float("nan")
    case_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, case_dir / "nan.ckpt")


def invalid_beta_checkpoint(fixture: Path, case_dir: Path) -> None:
    checkpoint = torch.load(fixture / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["diffusion"]["beta_end"] = 1.5
    case_dir.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, case_dir / "beta.ckpt")


def empty_folder(fixture: Path, case_dir: Path) -> None:
    (case_dir / "empty").mkdir(parents=True)


def corrupt_image(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "images" / "broken.png", "not a png")


def a_file(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "afile", "a file where a folder is expected")


def duplicate_subset(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "subset.txt", "1\n2\n2\n")


def misspelt_attribute_block(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "methods.yaml", "methods:\n  - {name: mine, attribute_config: configs/tiny/attribute.yaml, "
                                      "model: {dampnig: 0.1}}\n")


def out_of_range_subset(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "subset.txt", "1\n5000\n")


def not_an_index(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "subset.txt", "1\nseven\n")


def copy_finished(fixture: Path, case_dir: Path) -> None:
    _copy_finished(fixture, case_dir)


def finished_and_empty_folder(fixture: Path, case_dir: Path) -> None:
    _copy_finished(fixture, case_dir)
    empty_folder(fixture, case_dir)


def torch_dict(fixture: Path, case_dir: Path) -> None:
    case_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.zeros(3)}, case_dir / "plain.pt")


def query_file_0_255(fixture: Path, case_dir: Path) -> None:
    """Float queries still in 0..255 (not mapped to [-1, 1])."""
    case_dir.mkdir(parents=True, exist_ok=True)
    np.save(case_dir / "queries.npy", np.linspace(0, 255, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8))


def query_file_rgb(fixture: Path, case_dir: Path) -> None:
    """RGB 8x8 queries for the grey digits model."""
    case_dir.mkdir(parents=True, exist_ok=True)
    np.save(case_dir / "queries.npy", np.zeros((2, 3, 8, 8), dtype=np.float32))


def pipeline_with_thresholding(fixture: Path, case_dir: Path) -> None:
    """The fixture's model exported as a diffusers pipeline (``<fixture>/thresholding``: an input, not an output of
    the case) whose scheduler turns on dynamic thresholding."""
    from lit_attr.pipeline_io import export_pipeline, load_ddpm_module

    path = export_pipeline(load_ddpm_module(fixture / "run" / "checkpoints" / "last.ckpt"), fixture / "thresholding")
    config_file = path / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "thresholding": True}))


def vae_checkpoint(fixture: Path, case_dir: Path) -> None:
    """A Lightning checkpoint of the digits VAE (``VAEModule``), as train.py writes with configs/vae_digits.yaml."""
    import lightning

    from lit_attr.latent.vae_module import VAEModule

    module = VAEModule(vae={"block_out_channels": [8, 8], "latent_channels": 2, "norm_num_groups": 4})
    case_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"pytorch-lightning_version": lightning.__version__, "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams)}, case_dir / "vae.ckpt")


def vae_config(fixture: Path, case_dir: Path) -> None:
    _write(case_dir / "vae.yaml", (ROOT / "configs" / "vae_digits.yaml").read_text().replace("runs/vae_digits",
                                                                                              str(case_dir / "run")))


# ---------------------------------------------------------------------------------------------- cases

def _train(case_id: str, bad: str, args: tuple[str, ...], *expect: str, **kw) -> Case:
    return Case(case_id, bad, TRAIN, args, expect, **kw)


def _attr(case_id: str, bad: str, args: tuple[str, ...], *expect: str, **kw) -> Case:
    return Case(case_id, bad, ATTR, args, expect, **kw)


CASES: list[Case] = [
    # ---- train.py: hyperparameters (refused at construction, before any training)
    _train("train-lr-nan", "learning rate NaN", ("--model.optimizer.lr", "nan"),
           "--model.optimizer.lr must be a finite number > 0", real_cli=True),
    _train("train-lr-negative", "negative learning rate", ("--model.optimizer.lr", "-0.1"), "--model.optimizer.lr must be > 0"),
    _train("train-lr-text", "learning rate not a number", ("--model.optimizer.lr", "fast"), "--model.optimizer.lr must be a number"),
    _train("train-lr-diverges", "learning rate so large that training diverges",
           ("--model.optimizer.lr", "1e30", "--trainer.max_steps", "3"), "the loss is", "lower --model.optimizer.lr",
           "No checkpoint was written"),
    _train("train-weight-decay", "negative weight decay", ("--model.optimizer.weight_decay", "-1"),
           "--model.optimizer.weight_decay must be >= 0"),
    _train("train-warmup", "warm-up fraction above 1", ("--model.optimizer.warmup_fraction", "1.5"),
           "--model.optimizer.warmup_fraction must be in [0, 1)"),
    _train("train-adam-betas", "Adam beta of 1.5", ("--model.optimizer.betas", "[0.9, 1.5]"),
           "--model.optimizer.betas entries must be in [0, 1)"),
    _train("train-beta-end", "beta_end above 1 (samples would be NaN)", ("--model.diffusion.beta_end", "1.5"),
           "--model.diffusion.beta_end must be in (0, 1)"),
    _train("train-beta-end-nan", "beta_end NaN", ("--model.diffusion.beta_end", "nan"),
           "--model.diffusion.beta_end must be a finite number"),
    _train("train-beta-start-zero", "beta_start 0", ("--model.diffusion.beta_start", "0"),
           "--model.diffusion.beta_start must be in (0, 1)"),
    _train("train-betas-decrease", "beta_end below beta_start",
           ("--model.diffusion.beta_start", "0.1", "--model.diffusion.beta_end", "0.01"),
           "--model.diffusion.beta_end (0.01) must be >= --model.diffusion.beta_start"),
    _train("train-one-timestep", "a single diffusion step", ("--model.diffusion.num_timesteps", "1"),
           "--model.diffusion.num_timesteps must be >= 2"),
    _train("train-ema-one", "EMA decay 1 (weights would never move)", ("--model.ema_decay", "1.0"),
           "--model.ema_decay must be in [0, 1)"),
    _train("train-loss-buckets", "negative loss buckets", ("--model.loss_buckets", "-1"), "--model.loss_buckets"),
    _train("train-norm-groups", "GroupNorm groups that do not divide the channels",
           ("--model.unet.block_out_channels", "[12, 32]"), "norm_num_groups=8 does not divide channels [12]"),
    _train("train-unet-levels", "down blocks for 2 levels, channels for 3",
           ("--model.unet.block_out_channels", "[16, 32, 64]"), "give one block per level"),
    _train("train-dropout", "dropout 1.5", ("--model.unet.dropout", "1.5"), "--model.unet.dropout must be in [0, 1)"),
    _train("train-layers-per-block", "zero ResNet layers per block", ("--model.unet.layers_per_block", "0"),
           "--model.unet.layers_per_block must be >= 1"),
    # ---- train.py: arguments and data
    _train("train-unknown-flag", "misspelt flag", ("--model.learning_rate", "0.1"), "--model.learning_rate",
           "train.py fit --help", real_cli=True),
    _train("train-bad-choice", "unknown dataset name", ("--data.dataset", "mnist"), "data.dataset", "mnist"),
    _train("train-steps-text", "max_steps not a number", ("--trainer.max_steps", "many"), "trainer.max_steps"),
    _train("train-missing-config", "config file that does not exist", ("--config", "{case}/nowhere.yaml"),
           "nowhere.yaml"),
    _train("train-batch-size", "batch size 0", ("--data.batch_size", "0"), "--data.batch_size must be >= 1"),
    _train("train-workers", "negative worker count", ("--data.num_workers", "-1"), "--data.num_workers must be >= 0"),
    _train("train-subset-missing", "subset file that does not exist", ("--data.subset_file", "{case}/none.txt"),
           "does not exist", "--data.subset_file"),
    _train("train-subset-duplicates", "subset file listing an index twice", ("--data.subset_file", "{case}/subset.txt"),
           "duplicates", setup=duplicate_subset),
    _train("train-subset-range", "subset index beyond the dataset", ("--data.subset_file", "{case}/subset.txt"),
           "out of range", setup=out_of_range_subset),
    _train("train-subset-text", "subset file with a word", ("--data.subset_file", "{case}/subset.txt"),
           "subset.txt:2", setup=not_an_index),
    _train("train-folder-missing", "image-folder dataset without a folder",
           ("--data.dataset", "folder", "--data.image_size", "8", "--data.channels", "1"), "--data.data_dir"),
    _train("train-folder-empty", "image folder without images",
           ("--data.dataset", "folder", "--data.data_dir", "{case}/empty", "--data.image_size", "8",
            "--data.channels", "1"), "contains no images", "--data.data_dir", setup=empty_folder),
    _train("train-folder-channels", "image folder with 2 channels",
           ("--data.dataset", "folder", "--data.data_dir", "{case}", "--data.image_size", "8", "--data.channels", "2"),
           "--data.channels 1 (grey) or 3 (RGB)"),
    _train("train-cifar-missing", "CIFAR-10 without its folder", ("--data.dataset", "cifar10"), "--data.data_dir"),
    _train("train-digits-size", "image size that digits does not have", ("--data.image_size", "16"),
           "--data.image_size=16 does not fit dataset='digits'"),
    _train("train-root-is-file", "run folder that is a file", ("--trainer.default_root_dir", "{case}/afile"),
           "--trainer.default_root_dir", "is a file", setup=a_file),
    # ---- train.py: checkpoints
    _train("train-ckpt-missing", "--ckpt_path that does not exist", ("--ckpt_path", "{case}/none.ckpt"),
           "--ckpt_path", "does not exist"),
    _train("train-ckpt-yaml", "--ckpt_path to a YAML file", ("--ckpt_path", "{fixture}/train.yaml"),
           "not a PyTorch checkpoint"),
    _train("train-ckpt-plain-torch", "--ckpt_path to a torch file that is not a Lightning checkpoint",
           ("--ckpt_path", "{case}/plain.pt"), "not a Lightning checkpoint", setup=torch_dict),
    _train("train-ckpt-folder", "--ckpt_path to a folder", ("--ckpt_path", "{fixture}/run"), "is a folder"),
    _train("train-ckpt-architecture", "checkpoint of another U-Net than the config",
           ("--ckpt_path", "{fixture}/run/checkpoints/last.ckpt", "--model.unet.block_out_channels", "[32, 64]"),
           "holds another architecture", "unet.block_out_channels: checkpoint [16, 32], config [32, 64]"),
    _train("train-ckpt-vae", "--ckpt_path of the latent demo's VAE for a DDPM config", ("--ckpt_path", "{case}/vae.ckpt"),
           "a Lightning checkpoint of another model", "VAEModule checkpoint", setup=vae_checkpoint),
    Case("train-vae-ckpt-ddpm", "VAE config (configs/vae_digits.yaml) resuming a DDPM checkpoint",
         ("train.py", "fit", "--config", "{case}/vae.yaml"), ("--ckpt_path", "{fixture}/run/checkpoints/last.ckpt"),
         ("is not a VAEModule checkpoint", "drop --ckpt_path"), setup=vae_config),
    _train("train-ckpt-last-none", "--ckpt_path last before any checkpoint exists", ("--ckpt_path", "last"),
           "--ckpt_path last: no last*.ckpt in", "drop --ckpt_path"),
    _train("train-ckpt-last-disabled", "--ckpt_path last with checkpointing switched off",
           ("--ckpt_path", "last", "--trainer.enable_checkpointing", "false"), "enable_checkpointing"),
    # ---- attribute.py: model
    _attr("attr-ckpt-missing", "checkpoint that does not exist", ("--model.checkpoint", "{case}/none.ckpt"),
          "No model at", "Lightning checkpoint"),
    _attr("attr-ckpt-yaml", "checkpoint that is a YAML file", ("--model.checkpoint", "{fixture}/attribute.yaml"),
          "--model.checkpoint", "not a PyTorch checkpoint"),
    _attr("attr-ckpt-plain-torch", "checkpoint that is not a Lightning checkpoint",
          ("--model.checkpoint", "{case}/plain.pt"), "not a Lightning checkpoint", setup=torch_dict, real_cli=True),
    _attr("attr-ckpt-nan", "checkpoint with a NaN weight", ("--model.checkpoint", "{case}/nan.ckpt"),
          "nan in conv_in.weight", "the training diverged", setup=nan_weights_checkpoint),
    _attr("attr-ckpt-beta", "checkpoint trained with beta_end 1.5", ("--model.checkpoint", "{case}/beta.ckpt"),
          "trained with settings that are now refused", "beta_end", setup=invalid_beta_checkpoint),
    _attr("attr-image-shape", "data of another image size than the model",
          ("--data.dataset", "folder", "--data.data_dir", "{case}/images", "--data.image_size", "16",
           "--data.channels", "1", "--data.subset_file", "null"), "trained on images of shape (1, 8, 8)",
          setup=corrupt_image),
    _attr("attr-pipeline-thresholding", "diffusers pipeline whose scheduler uses dynamic thresholding",
          ("--model.checkpoint", "{fixture}/thresholding"), "thresholding=true", "not supported",
          setup=pipeline_with_thresholding),
    # ---- attribute.py: settings
    _attr("attr-damping-nan", "damping NaN", ("--model.damping", "nan"), "model.damping", "Got value: nan"),
    _attr("attr-damping-yaml-nan", "damping NaN in YAML spelling", ("--model.damping", ".nan"),
          "--model.damping must be a finite number"),
    _attr("attr-damping-negative", "negative damping", ("--model.damping", "-1"), "--model.damping must be >= 0"),
    _attr("attr-draws-zero", "no gradient draws", ("--model.num_draws", "0"), "--model.num_draws must be >= 1"),
    _attr("attr-top-k", "top_k 0", ("--model.top_k", "0"), "--model.top_k must be >= 1"),
    _attr("attr-query-batch", "query batch size 0", ("--model.query_batch_size", "0"),
          "--model.query_batch_size must be >= 1"),
    _attr("attr-measurement-draws", "no measurement draws", ("--model.measurement.num_draws", "0"),
          "--model.measurement.num_draws must be >= 1"),
    _attr("attr-seed", "negative seed", ("--model.seed", "-1"), "--model.seed must be >= 0"),
    _attr("attr-measurement-name", "misspelt measurement", ("--model.measurement.measurement", "elbow"),
          "measurement='elbow' is not supported", "loss_at_t<t>"),
    _attr("attr-timestep-missing", "loss_at_timestep without a timestep",
          ("--model.measurement.measurement", "loss_at_timestep"), "write loss_at_t<t>"),
    _attr("attr-compression", "unknown query compression", ("--model.query_compression", "int4"), "int4"),
    _attr("attr-inference-mode", "inference mode on (no autograd)", ("--trainer.inference_mode", "true"),
          "needs autograd"),
    _attr("attr-batch-size", "batch size 0", ("--data.batch_size", "0"), "--data.batch_size must be >= 1"),
    # ---- attribute.py: queries
    _attr("attr-query-folder-missing", "query folder that does not exist", ("--model.queries.folder", "{case}/none"),
          "--model.queries.folder", "does not exist"),
    _attr("attr-query-folder-empty", "query folder without images", ("--model.queries.folder", "{case}/empty"),
          "contains no images", "--model.queries.folder", setup=empty_folder),
    _attr("attr-query-image-corrupt", "query folder with a broken image", ("--model.queries.folder", "{case}/images"),
          "Cannot read image", "broken.png", setup=corrupt_image),
    _attr("attr-query-file-range", "query tensor file with pixel values 0..255",
          ("--model.queries.file", "{case}/queries.npy"), "--model.queries.file", "the values span [0, 255]",
          "images are in [-1, 1]", setup=query_file_0_255),
    _attr("attr-query-file-shape", "query tensor file of RGB images for a grey model",
          ("--model.queries.file", "{case}/queries.npy"), "shape (2, 3, 8, 8)", "(N, 1, 8, 8)", setup=query_file_rgb),
    _attr("attr-query-file-missing", "query tensor file that does not exist", ("--model.queries.file", "{case}/q.pt"),
          "--model.queries.file", "does not exist"),
    _attr("attr-query-labels", "query labels for a model without classes", ("--model.queries.labels", "[3]"),
          "not class-conditional", "drop it"),
    _attr("attr-query-count", "zero generated queries", ("--model.queries.num_generated", "0"),
          "--model.queries.num_generated must be >= 1"),
    _attr("attr-query-index", "query index not in the training data", ("--model.queries.train_indices", "[5000]"),
          "--model.queries.train_indices [5000] are not in the training data"),
    _attr("attr-query-both", "query folder and training indices together",
          ("--model.queries.folder", "{case}", "--model.queries.train_indices", "[1]"), "at most one"),
    _attr("attr-checkpoints-one", "--checkpoints with a single model",
          ("--checkpoints", "[{fixture}/run/checkpoints/last.ckpt]"), "averages two or more models",
          "--model.checkpoint instead", real_cli=True),
    _attr("attr-checkpoints-missing", "--checkpoints naming a file that does not exist",
          ("--checkpoints", "[{fixture}/run/checkpoints/last.ckpt, {case}/none.ckpt]"), "none.ckpt does not exist"),
    _attr("attr-checkpoints-pixel", "--checkpoints with a method that does not use the model",
          ("--method", "pixel", "--checkpoints", "[{fixture}/run/checkpoints/last.ckpt, {fixture}/run/checkpoints/last.ckpt]"),
          "--method pixel does not use the diffusion model"),
    _attr("attr-continuation-steps", "--continuation.steps that are not distinct positive counts",
          ("--continuation.steps", "[0, 100]"), "distinct positive step counts", "'[100, 200, 300]'"),
    _attr("attr-continuation-lr-alone", "--continuation.lr without --continuation.steps",
          ("--continuation.lr", "1e-3"), "needs --continuation.steps"),
    _attr("attr-trajectory-folder", "trajectory measurement on images from a folder",
          ("--model.measurement.measurement", "trajectory_logprob", "--model.queries.train_indices", "[1, 2]"),
          "needs recorded sampling trajectories"),
    _attr("attr-memory-queries", "10,000 queries with LIT_ATTR_MEMORY_LIMIT=50MB",
          ("--model.queries.num_generated", "10000"), "attribution needs about", "use fewer queries",
          env={"LIT_ATTR_MEMORY_LIMIT": "50MB"}, real_cli=True),
    _attr("attr-memory-batch", "a batch too large for LIT_ATTR_MEMORY_LIMIT=150MB", ("--data.batch_size", "64"),
          "attribution needs about", "use --data.batch_size", env={"LIT_ATTR_MEMORY_LIMIT": "150MB"}),
    # ---- attribute.py: output folder
    _attr("attr-output-is-file", "output folder that is a file", ("--model.output_dir", "{case}/afile"),
          "--model.output_dir", "is a file", setup=a_file),
    _attr("attr-output-under-file", "output folder inside a file", ("--model.output_dir", "{case}/afile/attr"),
          "is under", "which is a file", setup=a_file),
    _attr("attr-other-settings", "folder of a finished run with another damping", ("--model.damping", "0.5"),
          "holds scores computed with other settings", "damping", "--model.overwrite true", setup=copy_finished,
          keeps_previous_run=True),
    _attr("attr-overwrite-fails", "--model.overwrite true over a finished run, then a bad query folder",
          ("--model.overwrite", "true", "--model.queries.folder", "{case}/empty"), "contains no images",
          setup=finished_and_empty_folder),
    _attr("attr-scores-zeroed", "finished scores.npy overwritten with zeros", (), "scores.npy",
          "is damaged", "--model.overwrite true", setup=zero_finished_scores, real_cli=True),
    _attr("attr-scores-truncated", "truncated scores.npy of an interrupted run", (), "scores.npy", "unreadable",
          "--model.overwrite true", setup=truncate_scores_of_interrupted_run),
    _attr("attr-metadata-corrupt", "metadata.json cut short", (), "metadata.json in", "not valid JSON",
          "--model.overwrite true", setup=corrupt_metadata),
    _attr("attr-queries-corrupt", "queries.pt replaced by garbage", (), "queries.pt", "is damaged",
          "--model.overwrite true", setup=corrupt_queries),
    _attr("attr-factors-nan", "curvature factors holding NaN", (), "factors.safetensors", "nan in the A (input) factor",
          "--model.overwrite true", setup=nan_factors),
    _attr("attr-factors-truncated", "truncated curvature factors", (), "factors.safetensors", "cannot be read",
          "--model.overwrite true", setup=truncated_factors),
    # ---- evaluate.py
    Case("eval-workers-zero", "--num_workers 0", EVAL_RETRAIN, ("--num_workers", "0"),
         ("--num_workers must be >= 1",), real_cli=True),
    Case("eval-worker-range", "worker index beyond the workers", EVAL_RETRAIN, ("--worker", "2", "--num_workers", "2"),
         ("--worker must be in [0, --num_workers - 1]",)),
    Case("eval-start-negative", "negative --start", EVAL_RETRAIN, ("--start", "-1"), ("--start and --count must be >= 0",)),
    Case("eval-retrain-first", "retrain before the full model exists", EVAL_RETRAIN, (),
         ("the full model is not trained yet",)),
    Case("eval-report-missing", "report on a root with no finished stage", EVAL_REPORT, (),
         ("no finished benchmark stage under --root", "evaluate.py run")),
    Case("eval-recipe-missing", "training recipe that does not exist", EVAL_RUN, ("--retraining.recipe", "nowhere.yaml"),
         ("retraining.recipe nowhere.yaml does not exist",)),
    Case("eval-unknown-flag", "misspelt flag", EVAL_RUN, ("--retraining.num_subset", "3"), ("retraining.num_subset",)),
    Case("eval-protocol", "unknown seeding protocol", EVAL_RUN, ("--retraining.protocol", "shared"), ("protocol",)),
    Case("eval-subcommand", "unknown subcommand", ("evaluate.py", "rerun"), (), ("rerun",)),
    Case("eval-attribute-config-key", "misspelt key in a method's attribute.py model block", EVAL_RUN,
         ("--config", "{case}/methods.yaml"), ("model.dampnig is not a setting of attribute.py's model block",),
         setup=misspelt_attribute_block),
]


# ---------------------------------------------------------------------------------------------- running

def build_fixture(root: Path) -> Path:
    """Shared files: a tiny trained checkpoint, train/attribute configs and a finished attribution run."""
    from lit_attr.data.index_files import write_index_file

    root.mkdir(parents=True, exist_ok=True)
    _, trainer = train_tiny_ddpm(root / "train", max_steps=4, ema_decay=0.9, batch_size=64, enable_checkpointing=False)
    (root / "run" / "checkpoints").mkdir(parents=True)
    trainer.save_checkpoint(root / "run" / "checkpoints" / "last.ckpt")
    write_index_file(root / "subset.txt", range(NUM_TRAIN))
    tiny_config(root, "train.yaml")
    attr = tiny_config(root, "attribute.yaml")
    attr.write_text(attr.read_text().replace(str(root / "run") + "/subset.txt", str(root / "subset.txt")))
    status, err = run_in_process(["attribute.py", "--config", str(attr), "--model.output_dir", str(root / "finished"),
                                  "--trainer.default_root_dir", str(root / "finished")])
    assert status == 0, err
    return root


def run_in_process(argv: list[str], env: dict[str, str] | None = None, stdout: io.StringIO | None = None
                   ) -> tuple[int, str]:
    """``run_cli(<script>.main, args)`` as the script would run it; returns (exit status, stderr)."""
    from lit_attr.cli_errors import run_cli

    script = importlib.import_module(Path(argv[0]).stem)
    stderr = io.StringIO()
    saved = {key: os.environ.get(key) for key in (env or {})}
    os.environ.update(env or {})
    program, sys.argv[0] = sys.argv[0], argv[0]  # the parsers name the program in their hints
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout or io.StringIO()):
            try:
                status = run_cli(script.main, argv[1:])
            except SystemExit as exit_:
                status = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv[0] = program
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return status, stderr.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def leftovers(case_dir: Path) -> list[str]:
    """Complete-looking outputs under ``case_dir``: reports, samples, checkpoints, finalized metadata."""
    found = [str(p.relative_to(case_dir)) for p in case_dir.rglob("*") if p.name in COMPLETE_LOOKING]
    for metadata in case_dir.rglob("metadata.json"):
        with contextlib.suppress(json.JSONDecodeError):
            if json.loads(metadata.read_text()).get("finalized"):
                found.append(str(metadata.relative_to(case_dir)))
    return found


def normalise(text: str, fixture: Path, case_dir: Path) -> str:
    return text.replace(str(case_dir), "<case>").replace(str(fixture), "<fixture>").replace(str(ROOT) + "/", "")


def write_docs(path: Path, messages: dict[str, str]) -> None:
    """``docs/errors.md``: one row per case with the real message."""
    lines = ["# Errors and what to do", "",
             "Every failure of `train.py`, `attribute.py` and `evaluate.py` prints one `error:` line naming the "
             "problem and the fix, and exits with status 2 for refused input (1 for other failures). `--debug` "
             "(or `LIT_ATTR_DEBUG=1`) shows the traceback. Nothing complete-looking is left behind: an attribution "
             "folder is `finalized` only after every row is scored, and a damaged one loses its report.", "",
             "This table is generated by `python -m tests.error_catalogue` from `tests/error_catalogue.py`; "
             "`tests/test_error_catalogue.py` runs every entry through the CLIs. `<case>` is the run's folder, "
             "`<fixture>` a tiny trained model with its configs.", "",
             "| id | bad input | command (besides the config) | message |", "|---|---|---|---|"]
    for case in CASES:
        message = messages[case.id].replace("|", "\\|")
        lines.append(f"| `{case.id}` | {case.bad_input} | `{case.command}` | {message} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import tempfile

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = build_fixture(Path(tmp) / "fixture")
        messages = {}
        for case in CASES:
            case_dir = Path(tmp) / "cases" / case.id
            case_dir.mkdir(parents=True)
            if case.setup is not None:
                case.setup(fixture, case_dir)
            status, stderr = run_in_process(case.argv(fixture, case_dir), case.env)
            lines = error_lines(stderr)
            messages[case.id] = normalise(lines[-1] if lines else f"(no error line; exit {status})", fixture, case_dir)
            print(f"{case.id}: {status} {messages[case.id]}", file=sys.stderr)
    write_docs(ROOT / "docs" / "errors.md", messages)


if __name__ == "__main__":
    main()
