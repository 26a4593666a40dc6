"""``callbacks.curvature.KFACCallback``, the YAML name of ``lit_attr.curvature.callback.KFACCallback``."""

from lit_attr.curvature.callback import KFACCallback

__all__ = ["KFACCallback"]
