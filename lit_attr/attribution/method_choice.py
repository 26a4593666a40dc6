"""``attribute.py --method NAME``: the LightningModule that scores, and the config settings of other methods.

The names are the benchmark's method kinds (``lit_attr.methods.registry.METHODS``: ``kfac``, ``trak``,
``dtrak``, ``pixel``, ``clip``) plus ``ekfac`` (K-FAC influence with the eigenvalue-corrected curvature) and
``ensemble`` (the mean of finished runs of several models).
The method comes from ``--method`` on the command line, else from a ``method:`` key of a ``--config``
file, else ``kfac``. A config written for K-FAC (``configs/attribute/digits.yaml``) serves every method:
the ``model`` settings the chosen module does not take and a ``KFACCallback`` for a method without
curvature are left out, in one printed line; the same settings given as flags are refused.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lit_attr.errors import ConfigError

DEFAULT_METHOD = "kfac"
EKFAC = "ekfac"
ENSEMBLE = "ensemble"
"""The mean of finished runs of several models (``lit_attr.attribution.ensemble``)."""


@dataclass(frozen=True)
class AttributeMethod:
    """One value of ``--method``.

    Attributes:
        name: the value.
        module_path: import path of its LightningModule.
        uses_curvature: whether it needs a ``KFACCallback``.
        uses_model: whether its scores depend on the diffusion model (not image similarities, not the ensemble's
            mean of finished runs).
        eigenvalue_correction: EK-FAC (the callback's ``eigenvalue_correction`` is switched on).
    """

    name: str
    module_path: str
    uses_curvature: bool
    uses_model: bool = True
    eigenvalue_correction: bool = False

    @property
    def module_class(self) -> type:
        module_name, _, class_name = self.module_path.rpartition(".")
        return getattr(importlib.import_module(module_name), class_name)

    def accepts(self, key: str) -> bool:
        """Whether the module takes the ``model.<key>`` setting."""
        return key in inspect.signature(self.module_class.__init__).parameters


def attribute_methods() -> dict[str, AttributeMethod]:
    """Every ``--method`` value, from the method registry."""
    from lit_attr.methods.registry import METHODS

    methods = {kind: AttributeMethod(kind, cls.attribute_module, cls.uses_curvature, cls.uses_model)
               for kind, cls in METHODS.items()}
    kfac = methods[DEFAULT_METHOD]
    methods[EKFAC] = AttributeMethod(EKFAC, kfac.module_path, True, eigenvalue_correction=True)
    methods[ENSEMBLE] = AttributeMethod(ENSEMBLE, "lit_attr.attribution.ensemble.EnsembleModule", False, False)
    return methods


def flag_values(args: list[str], flag: str) -> list[str]:
    """The values of ``flag`` in ``args`` (``--flag value`` and ``--flag=value``), in the order given."""
    values = []
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        elif arg == flag and i + 1 < len(args):
            values.append(args[i + 1])
    return values


def config_values(args: list[str], *keys: str) -> list[Any]:
    """The setting at ``keys`` (e.g. ``"model", "output_dir"``) of each ``--config`` file that has it, in order."""
    values = []
    for path in (Path(value) for value in flag_values(args, "--config")):
        data: Any = read_yaml(path) if path.is_file() else {}
        for key in keys:
            data = data.get(key) if isinstance(data, dict) else None
        if data is not None:
            values.append(data)
    return values


def choose_method(args: list[str] | None) -> AttributeMethod:
    """The method of ``--method`` (else of a config file's ``method:``, else ``kfac``).

    Raises:
        ConfigError: an unknown name (listing the known ones).
    """
    args = sys.argv[1:] if args is None else list(args)
    names = flag_values(args, "--method") or [str(name) for name in config_values(args, "method")]
    name = names[-1] if names else DEFAULT_METHOD
    methods = attribute_methods()
    if name not in methods:
        raise ConfigError(f"--method {name} is not known; choose one of {', '.join(methods)}.")
    return methods[name]


def read_yaml(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    return data if isinstance(data, dict) else {}


def without_other_methods_settings(args: list[str] | None, method: AttributeMethod) -> list[str]:
    """``args`` with each ``--config`` file replaced by its settings that ``method`` takes (a YAML string),
    printing what was left out; unchanged for K-FAC."""
    args = sys.argv[1:] if args is None else list(args)
    if method.name == DEFAULT_METHOD:
        return args
    out, dropped = [], []
    for i, arg in enumerate(args):
        inline = arg.startswith("--config=")
        value = arg.split("=", 1)[1] if inline else arg if i > 0 and args[i - 1] == "--config" else None
        if value is None or not Path(value).is_file():
            out.append(arg)
            continue
        data = read_yaml(Path(value))
        model = data.get("model") or {}
        dropped += [f"model.{key}" for key in model if not method.accepts(key)]
        data["model"] = {key: setting for key, setting in model.items() if method.accepts(key)}
        callbacks = (data.get("trainer") or {}).get("callbacks")
        if not method.uses_curvature and isinstance(callbacks, list):
            kept = [cb for cb in callbacks if not str((cb or {}).get("class_path", "")).endswith("KFACCallback")]
            dropped += ["trainer.callbacks: KFACCallback"] * (len(kept) < len(callbacks))
            data["trainer"]["callbacks"] = kept
        out.append(("--config=" if inline else "") + yaml.safe_dump(data))
    if dropped:
        print(f"--method {method.name}: leaving out the config's settings of other methods: {', '.join(dropped)}",
              file=sys.stderr)
    return out
