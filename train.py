"""Train a DDPM: ``python train.py fit --config configs/digits.yaml`` (LightningCLI).

Errors are one ``error:`` line with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

import sys

from lit_attr.cli import LitAttrCLI
from lit_attr.cli_errors import run_cli
from lit_attr.data.datamodules import DiffusionDataModule
from lit_attr.ddpm_module import DDPMModule


def main(args: list[str] | None = None) -> None:
    LitAttrCLI(DDPMModule, DiffusionDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    sys.exit(run_cli(main))
