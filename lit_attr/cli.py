"""LightningCLIs of lit-attr: ``LitAttrCLI`` (train.py) and ``AttributeCLI`` (attribute.py)."""

from __future__ import annotations

from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

set_parsing_settings(docstring_parse_attribute_docstrings=True)


class LitAttrCLI(LightningCLI):
    """Training CLI: links the image shape of the data module into the model once."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")


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
