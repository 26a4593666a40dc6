"""Train a DDPM: ``python train.py fit --config configs/digits.yaml`` (LightningCLI); a config may name another
model, e.g. ``configs/vae_digits.yaml`` trains the autoencoder of a latent DDPM.

Errors are one ``error:`` line with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

import sys

from lit_attr.cli import train_cli
from lit_attr.cli_errors import run_cli


def main(args: list[str] | None = None) -> None:
    train_cli(args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    sys.exit(run_cli(main))
