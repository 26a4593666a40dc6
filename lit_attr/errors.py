"""Typed errors raised for bad user input; each message names the problem and the fix."""


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
