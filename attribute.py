"""Attribute generated samples to training data: ``python attribute.py --config configs/attribute/digits.yaml``.

``--method`` chooses the method: ``kfac`` (K-FAC influence, the default), ``ekfac``, ``trak``, ``dtrak``,
``pixel`` or ``clip`` (``lit_attr.attribution.method_choice``). ``--checkpoints '[a.ckpt, b.ckpt]'`` scores
each of several models with it and writes the mean (``lit_attr.attribution.checkpoint_ensemble``). Errors are one
``error:`` line with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

import sys
import warnings

from lit_attr.attribution.checkpoint_ensemble import requested_checkpoints, run_checkpoint_ensemble
from lit_attr.attribution.method_choice import AttributeMethod, choose_method, without_other_methods_settings
from lit_attr.attribution.run import run_attribution
from lit_attr.cli import AttributeCLI
from lit_attr.cli_errors import run_cli
from lit_attr.data.datamodules import AttributionDataModule


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    method = choose_method(args)
    checkpoints = requested_checkpoints(args)
    if checkpoints is not None:
        run_checkpoint_ensemble(args, checkpoints, method, attribute_one)
        return
    attribute_one(args, method)


def attribute_one(args: list[str], method: AttributeMethod | None = None) -> None:
    """One ``attribute.py`` run: one model, one method."""
    method = method or choose_method(args)
    # the config files are handed over rewritten (method_choice), so LightningCLI gets args besides sys.argv
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    cli = AttributeCLI(method.module_class, AttributionDataModule, method=method,
                       args=without_other_methods_settings(args, method), save_config_kwargs={"overwrite": True})
    run_attribution(cli.trainer, cli.model, cli.datamodule)


if __name__ == "__main__":
    sys.exit(run_cli(main))
