"""LightningCLIs of lit-attr: ``LitAttrCLI`` (train.py) and ``AttributeCLI`` (attribute.py).

Both print argument errors as one line (``lit_attr.cli_errors``). ``LitAttrCLI`` also makes every
output of a training run follow the run folder ``--trainer.default_root_dir`` unless a callback
sets its own ``dirpath`` (checkpoints in ``<run>/checkpoints``; samples and the pipeline export
default to the run folder in their callbacks), and checks ``--ckpt_path`` before any work: the file
must be a lit-attr Lightning checkpoint of the configured architecture (it never silently replaces
the configured model), and ``--ckpt_path last`` must find a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_attr.checkpoints import check_same_architecture, read_checkpoint
from lit_attr.cli_errors import OneLineLightningArgumentParser
from lit_attr.errors import CheckpointError, ConfigError
from lit_attr.validation import check_output_folder

set_parsing_settings(docstring_parse_attribute_docstrings=True)

SPECIAL_CKPT_PATHS = ("last", "best", "hpc")
"""``--ckpt_path`` values that Lightning resolves itself (not file paths)."""


class LitAttrCLI(LightningCLI):
    """Training CLI (subcommand ``fit``): links the image shape of the data module into the model once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("parser_class", OneLineLightningArgumentParser)
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """Only ``fit``: ``DDPMModule`` has no validation, test or predict step (and each subcommand's
        parser costs a second to build)."""
        return {"fit": LightningCLI.subcommands()["fit"]}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` (readable Lightning checkpoint, same architecture) before building anything.

        Replaces LightningCLI's behaviour of loading the model's hyperparameters from the checkpoint,
        which silently swapped the configured U-Net for the checkpoint's.
        """
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry"):
            return
        checkpoint = read_checkpoint(ckpt_path)
        configured = self.config[subcommand].model.as_dict()
        configured.pop("image_shape", None)  # linked from the data at instantiation; checked on load
        check_same_architecture(checkpoint["hyper_parameters"], configured, ckpt_path)

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


def _last_checkpoints(folder: Path) -> list[Path]:
    """``last.ckpt`` / ``last-v1.ckpt`` files of a checkpoint folder (what Lightning resumes from)."""
    name, suffix = ModelCheckpoint.CHECKPOINT_NAME_LAST, ModelCheckpoint.FILE_EXTENSION
    return sorted(folder.glob(f"{name}*{suffix}")) if folder.is_dir() else []


class AttributeCLI(LightningCLI):
    """Attribution CLI (no subcommands): the trainer always gets a ``ScoreWriter`` and, unless the
    config lists one, a default ``KFACCallback``; autograd stays available in ``predict``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault("parser_class", OneLineLightningArgumentParser)
        super().__init__(*args, run=False, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from callbacks.curvature import KFACCallback
        from callbacks.score_writer import ScoreWriter

        trainer = super().instantiate_trainer(**kwargs)
        if trainer.predict_loop.inference_mode:
            raise ConfigError("attribute.py needs autograd: set trainer.inference_mode: false (the default here).")
        for kind in (KFACCallback, ScoreWriter):
            if not any(isinstance(cb, kind) for cb in trainer.callbacks):
                trainer.callbacks.append(kind())
        return trainer
