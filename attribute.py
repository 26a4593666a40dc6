"""Attribute generated samples to training data: ``python attribute.py --config configs/attribute/digits.yaml``.

``--method`` chooses the method: ``kfac`` (K-FAC influence, the default), ``ekfac``, ``trak``, ``dtrak``,
``pixel`` or ``clip`` (``lit_attr.attribution.method_choice``). ``--checkpoints '[a.ckpt, b.ckpt]'`` scores
each of several models with it and writes the mean (``lit_attr.attribution.checkpoint_ensemble``);
``--continuation.steps '[100, 200, 300]'`` does the same over the model and a short continuation of its training
(``lit_attr.attribution.continuation``). Errors are one
``error:`` line with the fix (``--debug`` shows the traceback; ``docs/errors.md``).
"""

import sys
import warnings

import torch

from lit_attr.attribution.checkpoint_ensemble import (
    requested_checkpoints,
    run_checkpoint_ensemble,
    without_flags,
)
from lit_attr.attribution.continuation import (
    continuation_flags_given,
    prepare_continuation,
    requested_continuation,
    without_continuation_flags,
)
from lit_attr.attribution.method_choice import (
    AttributeMethod,
    choose_method,
    without_other_methods_settings,
)
from lit_attr.attribution.run import run_attribution
from lit_attr.cli import AttributeCLI
from lit_attr.cli_errors import run_cli
from lit_attr.data.datamodules import AttributionDataModule


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    method = choose_method(args)
    continuation, checkpoints = requested_continuation(args), None
    if continuation is not None:  # the model and its continued weights become the checkpoints of an ensemble
        flags = continuation_flags_given(args)
        args = without_continuation_flags(args)
        checkpoints = prepare_continuation(args, continuation, method, lambda a: model_and_data(a, method), flags)
        if checkpoints is not None:  # the model is now the first of the checkpoints
            args = without_flags(args, lambda name: name == "--model.checkpoint")
    if checkpoints is None:
        checkpoints = requested_checkpoints(args)
    if checkpoints is not None:
        run_checkpoint_ensemble(args, checkpoints, method, attribute_one)
        return
    attribute_one(args, method)


def _cli(args: list[str], method: AttributeMethod) -> AttributeCLI:
    # the config files are handed over rewritten (method_choice), so LightningCLI gets args besides sys.argv
    warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
    return AttributeCLI(method.module_class, AttributionDataModule, method=method,
                        args=without_other_methods_settings(args, method), save_config_kwargs={"overwrite": True})


def model_and_data(args: list[str], method: AttributeMethod) -> tuple:
    """The DDPM, the training dataset, the model path and the device that ``args`` would attribute with (nothing
    runs; the device is this process's, e.g. cuda:0 for the first of several GPUs)."""
    cli = _cli(args, method)
    cli.datamodule.setup("predict")
    try:
        device = cli.trainer.strategy.root_device
    except (AttributeError, RuntimeError):  # a strategy that knows its device only once launched
        device = torch.device("cpu")
    return cli.model.ddpm, cli.datamodule.dataset, cli.model.checkpoint, device


def attribute_one(args: list[str], method: AttributeMethod | None = None) -> None:
    """One ``attribute.py`` run: one model, one method."""
    method = method or choose_method(args)
    cli = _cli(args, method)
    run_attribution(cli.trainer, cli.model, cli.datamodule)


if __name__ == "__main__":
    sys.exit(run_cli(main))
