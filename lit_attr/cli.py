"""LightningCLIs of lit-attr: ``LitAttrCLI`` (train.py) and ``AttributeCLI`` (attribute.py).

Both print argument errors as one line (``lit_attr.cli_errors``). ``LitAttrCLI`` also makes every
output of a training run follow the run folder ``--trainer.default_root_dir`` unless a callback
sets its own ``dirpath`` (checkpoints in ``<run>/checkpoints``; samples and the pipeline export
default to the run folder in their callbacks), and checks ``--ckpt_path`` before any work: the file
must be a lit-attr Lightning checkpoint of the configured architecture (it never silently replaces
the configured model), and ``--ckpt_path last`` must find a checkpoint.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_attr.checkpoints import check_resume
from lit_attr.cli_errors import OneLineLightningArgumentParser
from lit_attr.errors import CheckpointError, ConfigError, LitAttrError
from lit_attr.validation import check_output_folder

set_parsing_settings(docstring_parse_attribute_docstrings=True)

SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
"""``--ckpt_path`` values that Lightning resolves itself (not file paths)."""


DEFAULT_MODEL = "lit_attr.ddpm_module.DDPMModule"
"""The model of a training config that names no ``model.class_path`` (train.py)."""


class RaisesOwnErrors:
    """LightningCLI mixin: a class's own refusal (a ``LitAttrError``) is raised as itself, not inside the union
    error jsonargparse wraps it in (subclass mode, ``Optional`` dataclass settings), so ``--debug`` shows the
    refusal's traceback."""

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            cause = error.__cause__
            while cause is not None and not isinstance(cause, LitAttrError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


class LitAttrCLI(RaisesOwnErrors, LightningCLI):
    """Training CLI (subcommand ``fit``): links the image shape of the data module into the model once.

    In subclass mode (``train.py``, ``train_cli``) a config may name any LightningModule with an
    ``image_shape`` argument as ``model.class_path`` (e.g. ``lit_attr.latent.vae_module.VAEModule``);
    without one it trains a ``DDPMModule`` from ``model.init_args.*`` (``--model.*`` flags work as before).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", OneLineLightningArgumentParser)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only ``fit``: ``DDPMModule`` has no validation, test or predict step (and each subcommand's
        parser costs a second to build)."""
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.subclass_mode_model:
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})
        target = "model.init_args.image_shape" if self.subclass_mode_model else "model.image_shape"
        parser.link_arguments("data.image_shape", target, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (readable Lightning checkpoint, same architecture) before building anything.

        Replaces LightningCLI's behaviour of loading the model's hyperparameters from the checkpoint,
        which silently swapped the configured U-Net for the checkpoint's. In subclass mode the checkpoint
        must be of the model class the config names (a VAE checkpoint never resumes a DDPM config, nor
        the reverse).
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
            return
        model = self.config[subcommand].model
        if self.subclass_mode_model:
            module_name, _, class_name = model.class_path.rpartition(".")
            model_class = getattr(importlib.import_module(module_name), class_name)
            configured = model.init_args.as_dict() if model.get("init_args") else {}
        else:
            model_class, configured = self.model_class, model.as_dict()
        check_resume(ckpt_path, model_class, configured)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with checkpoints in ``<default_root_dir>/checkpoints`` unless a dirpath is set."""
        trainer = super().instantiate_trainer(**kwargs)
        run_dir = check_output_folder(trainer.default_root_dir, "--trainer.default_root_dir")
        for callback in trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
                callback.dirpath = str(run_dir / "checkpoints")
            if getattr(callback, "dirpath", None) is not None:
                check_output_folder(callback.dirpath, f"{type(callback).__name__} dirpath")
        return trainer

    def before_fit(self) -> None:
        """``--ckpt_path last`` must find a checkpoint (Lightning would train from scratch with a warning)."""
        if self.config[self.subcommand].get("ckpt_path") != "last":
            return
        folders = [Path(cb.dirpath) for cb in self.trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
        if not folders:
            raise ConfigError("--ckpt_path last needs checkpointing: list a ModelCheckpoint in trainer.callbacks "
                              "(and keep trainer.enable_checkpointing true).")
        if not any(_last_checkpoints(folder) for folder in folders):
            raise CheckpointError(f"--ckpt_path last: no last*.ckpt in {', '.join(map(str, folders))}; drop --ckpt_path "
                                  "to start a new run, or pass the --trainer.default_root_dir of the run to resume.")


def train_cli(args: list[str] | None = None, **kwargs: Any) -> LitAttrCLI:
    """``train.py``'s CLI: a DDPMModule by default, or the LightningModule a config names."""
    from lightning.pytorch import LightningModule

    from lit_attr.data.datamodules import DiffusionDataModule

    return LitAttrCLI(LightningModule, DiffusionDataModule, subclass_mode_model=True, args=args, **kwargs)


def _last_checkpoints(folder: Path) -> list[Path]:
    """``last.ckpt`` / ``last-v1.ckpt`` files of a checkpoint folder (what Lightning resumes from)."""
    name, suffix = ModelCheckpoint.CHECKPOINT_NAME_LAST, ModelCheckpoint.FILE_EXTENSION
    return sorted(folder.glob(f"{name}*{suffix}")) if folder.is_dir() else []


class AttributeCLI(RaisesOwnErrors, LightningCLI):
    """Attribution CLI (no subcommands) of one ``--method`` (``lit_attr.attribution.method_choice``): the trainer
    always gets a ``ScoreWriter`` and, for a method with curvature (K-FAC, EK-FAC) unless the config lists one, a
    default ``KFACCallback``; autograd stays available in ``predict``.

    Args:
        method: the chosen method (None: K-FAC); its LightningModule is the ``model_class``.
    """

    def __init__(self, *args: Any, method: Any = None, **kwargs: Any) -> None:
        from lit_attr.attribution.method_choice import DEFAULT_METHOD, attribute_methods

        self.method = method or attribute_methods()[DEFAULT_METHOD]
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", OneLineLightningArgumentParser)
        super().__init__(*args, run=False, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        from lit_attr.attribution.continuation import DEFAULT_BATCH_SIZE, ContinuationSettings
        from lit_attr.attribution.method_choice import attribute_methods

        parser.add_argument("--method", type=str, default=self.method.name,
                            help=f"Attribution method: {', '.join(attribute_methods())} (read before the other "
                                 "arguments; --help shows the chosen method's --model settings).")
        parser.add_argument("--checkpoints", type=Optional[list[str]], default=None,
                            help="Two or more models (final weights first) to score with the method, each in "
                                 "<output_dir>/members/, and average (read before the other arguments).")
        settings = {field.name: field.default for field in fields(ContinuationSettings)}  # one source of defaults
        continuation = ("Average over the model and its weights after these many more training steps "
                        "(lit_attr.attribution.continuation; read before the other arguments)")
        parser.add_argument("--continuation.steps", type=Optional[list[int]], default=None,
                            help=f"{continuation}, e.g. '[100, 200, 300]'.")
        parser.add_argument("--continuation.lr", type=Optional[float], default=None,
                            help="Constant learning rate of the continuation (default: the checkpoint's peak lr).")
        parser.add_argument("--continuation.batch_size", type=Optional[int], default=None,
                            help="Examples per continued step (default: the checkpoint's training batch size, "
                                 f"else {DEFAULT_BATCH_SIZE}).")
        parser.add_argument("--continuation.warmup_steps", type=int, default=settings["warmup_steps"],
                            help="Linear warm-up steps of the continuation's fresh AdamW.")
        parser.add_argument("--continuation.seed", type=int, default=settings["seed"],
                            help="Seed of the continuation's minibatches, timesteps and noise.")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from lit_attr.attribution.score_writer import ScoreWriter
        from lit_attr.curvature.callback import KFACCallback

        trainer = super().instantiate_trainer(**kwargs)
        if trainer.predict_loop.inference_mode:
            raise ConfigError("attribute.py needs autograd: set trainer.inference_mode: false (the default here).")
        curvature = [cb for cb in trainer.callbacks if isinstance(cb, KFACCallback)]
        if curvature and not self.method.uses_curvature:
            raise ConfigError(f"--method {self.method.name} uses no curvature: remove the KFACCallback from "
                              "trainer.callbacks.")
        if self.method.uses_curvature and not curvature:
            trainer.callbacks.append(KFACCallback())
        for callback in trainer.callbacks if self.method.eigenvalue_correction else ():
            if isinstance(callback, KFACCallback):
                callback.eigenvalue_correction = True
        if not any(isinstance(cb, ScoreWriter) for cb in trainer.callbacks):
            trainer.callbacks.append(ScoreWriter())
        return trainer
