"""``LitAttrCLI``: LightningCLI with lit-attr's argument links and docstring parsing."""

from __future__ import annotations

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

set_parsing_settings(docstring_parse_attribute_docstrings=True)


class LitAttrCLI(LightningCLI):
    """Links the image shape of the data module into the model, once, instead of repeating it."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")
