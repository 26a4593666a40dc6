"""Every attribution method by name: ``METHODS[kind]`` is the class of a ``methods:`` entry's ``kind``."""

from __future__ import annotations

from lit_attr.errors import ConfigError
from lit_attr.evaluation.config import MethodConfig
from lit_attr.methods.base import AttributionMethod
from lit_attr.methods.influence import KFACInfluence
from lit_attr.methods.similarity import ClipCosine, PixelCosine
from lit_attr.methods.trak import DTRAK, TRAK

METHODS: dict[str, type[AttributionMethod]] = {cls.kind: cls for cls in (KFACInfluence, TRAK, DTRAK, PixelCosine,
                                                                          ClipCosine)}


def method_for(config: MethodConfig) -> AttributionMethod:
    """The method object of a ``methods:`` entry.

    Raises:
        ConfigError: for a ``kind`` no method is registered under.
    """
    if config.kind not in METHODS:
        raise ConfigError(f"Method {config.name!r}: kind={config.kind!r} is not supported; choose one of "
                          f"{', '.join(METHODS)}.")
    return METHODS[config.kind](config)
