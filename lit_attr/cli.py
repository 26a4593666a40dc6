"""LightningCLIs of lit-attr: ``LitAttrCLI`` (train.py) and ``AttributeCLI`` (attribute.py)."""

from __future__ import annotations

from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

set_parsing_settings(docstring_parse_attribute_docstrings=True)


DEFAULT_MODEL = "lit_attr.ddpm_module.DDPMModule"
"""The model of a training config that names no ``model.class_path`` (train.py)."""


class LitAttrCLI(LightningCLI):
    """Training CLI: links the image shape of the data module into the model once.

    In subclass mode (``train.py``) a config may name any LightningModule with an ``image_shape``
    argument as ``model.class_path`` (e.g. ``lit_attr.latent.vae_module.VAEModule``); without one it
    trains a ``DDPMModule`` from ``model.*`` as before.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        if self.subclass_mode_model:
            parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}})
        target = "model.init_args.image_shape" if self.subclass_mode_model else "model.image_shape"
        parser.link_arguments("data.image_shape", target, apply_on="instantiate")


def train_cli(args: list[str] | None = None, **kwargs: Any) -> LitAttrCLI:
    """``train.py``'s CLI: a DDPMModule by default, or the LightningModule a config names."""
    from lightning.pytorch import LightningModule

    from lit_attr.data.datamodules import DiffusionDataModule

    return LitAttrCLI(LightningModule, DiffusionDataModule, subclass_mode_model=True, args=args, **kwargs)


class AttributeCLI(LightningCLI):
    """Attribution CLI (no subcommands): the trainer always gets a ``ScoreWriter`` and, unless the
    config lists one, a default ``KFACCallback``; autograd stays available in ``predict``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {"inference_mode": False})
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(*args, run=False, **kwargs)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        from callbacks.curvature import KFACCallback
        from callbacks.score_writer import ScoreWriter

        trainer = super().instantiate_trainer(**kwargs)
        if trainer.predict_loop.inference_mode:
            raise ValueError("attribute.py needs autograd: set trainer.inference_mode: false (the default here).")
        for kind in (KFACCallback, ScoreWriter):
            if not any(isinstance(cb, kind) for cb in trainer.callbacks):
                trainer.callbacks.append(kind())
        return trainer
