"""Attribute generated samples to training data: ``python attribute.py --config configs/attribute/digits.yaml``.

Errors are one ``error:`` line with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

import sys

from lit_attr.attribution.influence import InfluenceModule
from lit_attr.attribution.run import run_attribution
from lit_attr.cli import AttributeCLI
from lit_attr.cli_errors import run_cli
from lit_attr.data.datamodules import AttributionDataModule


def main(args: list[str] | None = None) -> None:
    cli = AttributeCLI(InfluenceModule, AttributionDataModule, args=args, save_config_kwargs={"overwrite": True})
    run_attribution(cli.trainer, cli.model, cli.datamodule)


if __name__ == "__main__":
    sys.exit(run_cli(main))
