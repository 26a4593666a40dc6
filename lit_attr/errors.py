"""Typed errors raised for bad user input; each message names the problem and the fix.

The command-line tools print any ``LitAttrError`` as one ``error: ...`` line and exit with status 2
(``lit_attr.cli_errors``); the full catalogue of messages is ``docs/errors.md``.
"""


class LitAttrError(Exception):
    """Base class of every error lit-attr raises on purpose."""


class ConfigError(LitAttrError, ValueError):
    """An argument or a combination of arguments is invalid."""


class DataError(LitAttrError, ValueError):
    """Input data (a dataset folder, an index file, a query folder) is missing or malformed."""


class StoreMismatchError(LitAttrError, ValueError):
    """An existing output folder was made with different settings than the current run."""


class UnsupportedLayerError(LitAttrError, NotImplementedError):
    """A layer type has no K-FAC implementation."""


class CheckpointError(LitAttrError, ValueError):
    """A checkpoint is missing, is not a Lightning checkpoint, or does not match the configured model."""


class NumericalError(LitAttrError, ArithmeticError):
    """NaN or Inf appeared in weights, queries, curvature, gradients or scores; names the stage and layer."""


class DamagedOutputError(LitAttrError, RuntimeError):
    """A stored output no longer matches its checksum or cannot be read; the fix is to recompute it."""


class ResourceError(LitAttrError, RuntimeError):
    """The run would not fit in the memory of the device; names the estimate and a setting that fits."""
