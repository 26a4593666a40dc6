"""A benchmark method written as ``attribute.py``'s config blocks: ``{name, attribute_config, method, model}``.

``attribute_block_settings`` translates an ``attribute.py`` config (its ``method``, its ``model:`` block and the
``KFACCallback`` init_args under ``trainer.callbacks``; an inline ``model:`` mapping goes on top of the file's) into
the ``MethodConfig`` fields that score the same way: one draw group of S = ``model.num_draws`` draws on stream
``train`` (``group_stream(0)``, as attribute.py), the one measurement and damping, the same curvature seed and draw
scheme (the callback's, else the module's as ``KFACCallback.resolved_seed`` / ``resolved_scheme`` take them), so
the benchmark's scores equal ``attribute.py``'s (``tests/test_method_blocks.py``).

What the benchmark itself provides (the checkpoint, output folder, queries, report settings, the ``data`` and
``trainer`` sections) is left out, named in one printed line; a key neither side knows is refused.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import yaml

from lit_attr.errors import ConfigError

ENTRY_KEYS = ("name", "batch_size", "attribute_config", "method", "model")
"""``MethodConfig`` fields an entry with an attribute config may set itself (the rest come from the config;
``batch_size`` from its ``data.batch_size`` unless the entry sets another)."""
FILE_KEYS = ("method", "model", "trainer", "data", "seed_everything", "continuation")
"""Top-level keys of an ``attribute.py`` config."""
BENCHMARK_PROVIDED = ("checkpoint", "output_dir", "queries", "top_k", "overwrite", "score_dtype", "query_batch_size",
                      "float_query_cache_mib")
"""``model:`` keys the benchmark sets itself (its full model, folders, queries, storage and batching)."""
CALLBACK_PROVIDED = ("factors_path", "fit_after_training", "progressbar")
"""``KFACCallback`` init_args the benchmark sets (its shared curvature folder)."""


def _defaults(cls: type) -> dict[str, Any]:
    """The arguments of ``cls.__init__`` and their defaults (``inspect.Parameter.empty`` for required ones)."""
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _read_config(path: str | None, owner: str) -> dict[str, Any]:
    if path is None:
        return {}
    file = Path(path).expanduser()
    data = yaml.safe_load(file.read_text()) if file.is_file() else None
    if not isinstance(data, dict):
        raise ConfigError(f"{owner}: attribute_config {path} is not an attribute.py YAML file; point it to one "
                          "(e.g. configs/attribute/digits.yaml).")
    unknown = [key for key in data if key not in FILE_KEYS]
    if unknown:
        raise ConfigError(f"{owner}: {path} has key {unknown[0]!r}, not one of attribute.py's "
                          f"({', '.join(FILE_KEYS)}); remove it.")
    return data


def _merged_model(data: dict[str, Any], inline: dict[str, Any] | None) -> dict[str, Any]:
    """The file's ``model:`` block with the inline one on top (nested mappings such as ``measurement`` merged)."""
    merged = dict(data.get("model") or {})
    for key, value in (inline or {}).items():
        base = merged.get(key)
        merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
    return merged


def _callback_args(data: dict[str, Any], owner: str, dropped: list[str]) -> dict[str, Any]:
    """The init_args of the config's ``KFACCallback`` (empty without one: attribute.py then adds a default one)."""
    from lit_attr.curvature.callback import KFACCallback

    callbacks = (data.get("trainer") or {}).get("callbacks") or []
    found = [cb for cb in callbacks if str((cb or {}).get("class_path", "")).endswith("KFACCallback")]
    args = dict((found[0].get("init_args") or {}) if found else {})
    known = _defaults(KFACCallback)
    for key in list(args):
        if key not in known:
            raise ConfigError(f"{owner}: KFACCallback init_args has key {key!r}, not a KFACCallback setting "
                              f"({', '.join(known)}); remove it.")
        if key in CALLBACK_PROVIDED:
            dropped.append(f"KFACCallback.{key}")
            del args[key]
    return {**known, **args}


def _model_settings(model: dict[str, Any], method: Any, owner: str, dropped: list[str]) -> dict[str, Any]:
    """The chosen method's ``model:`` settings with its defaults filled in; other methods' settings dropped."""
    from lit_attr.attribution.method_choice import attribute_methods

    every_method = {key for m in attribute_methods().values() for key in _defaults(m.module_class)}
    for key in model:
        if key not in every_method:
            raise ConfigError(f"{owner}: model.{key} is not a setting of attribute.py's model block "
                              f"(see `python attribute.py --method {method.name} --help`); remove it.")
        if key in BENCHMARK_PROVIDED or not method.accepts(key):
            dropped.append(f"model.{key}")
    own = _defaults(method.module_class)
    return {**own, **{key: value for key, value in model.items() if key in own and key not in BENCHMARK_PROVIDED}}


def _measurement(value: Any, owner: str) -> Any:
    from lit_attr.attribution.measurement_config import MeasurementConfig

    if value is None:
        return MeasurementConfig()
    known = [f.name for f in dataclasses.fields(MeasurementConfig)]
    unknown = [key for key in value if key not in known]
    if unknown:
        raise ConfigError(f"{owner}: model.measurement.{unknown[0]} is not a measurement setting "
                          f"({', '.join(known)}); remove it.")
    return MeasurementConfig(**value)


def _continuation(block: Any, owner: str) -> dict[str, Any]:
    """``ensemble_continuation`` / ``continuation_lr`` of an attribute.py ``continuation:`` block (empty without
    steps).

    Raises:
        ConfigError: a setting the benchmark's continuation does not take (it uses the defaults of the others).
    """
    from lit_attr.attribution.continuation import ContinuationSettings

    if not block or not block.get("steps"):
        return {}
    settings = ContinuationSettings(**{**block, "steps": tuple(block["steps"])})
    defaults = ContinuationSettings(steps=settings.steps)
    other = [key for key in ("batch_size", "warmup_steps", "seed") if getattr(settings, key) != getattr(defaults, key)]
    if other:
        raise ConfigError(f"{owner}: continuation.{other[0]} cannot be benchmarked (a benchmark's continuation uses "
                          "the recipe's batch size, 10 warm-up steps and seed 0); remove it.")
    return {"ensemble_continuation": list(settings.steps), "continuation_lr": settings.lr}


def attribute_block_settings(name: str, attribute_config: str | None, method_name: str | None,
                             model: dict[str, Any] | None) -> dict[str, Any]:
    """The ``MethodConfig`` fields (``CurvatureConfig`` as a dict) of an ``attribute.py`` config.

    Args:
        name: the entry's name (for messages).
        attribute_config: path of an ``attribute.py`` YAML file (None: only ``model``).
        method_name: attribute.py's ``--method`` (None: the file's ``method:``, else kfac).
        model: an inline ``model:`` block, applied on top of the file's.

    Raises:
        ConfigError: an unreadable file, an unknown key or method, or ``ensemble`` (use ``ensemble_seeds``).
    """
    from lit_attr.attribution.method_choice import DEFAULT_METHOD, ENSEMBLE, attribute_methods
    from lit_attr.diffusion.draws import DrawScheme

    owner = f"Method {name!r}"
    data = _read_config(attribute_config, owner)
    chosen = method_name or data.get("method") or DEFAULT_METHOD
    methods = attribute_methods()
    if chosen == ENSEMBLE or chosen not in methods:
        raise ConfigError(f"{owner}: method {chosen!r} cannot be benchmarked; choose one of "
                          f"{', '.join(m for m in methods if m != ENSEMBLE)} (an ensemble: ensemble_seeds).")
    method = methods[chosen]
    batch_size = (data.get("data") or {}).get("batch_size")  # the scoring batch: it sets the summation order
    dropped = [] if "data" not in data else ["data" if batch_size is None else "data (except batch_size)"]
    dropped += ["seed_everything"] * ("seed_everything" in data)
    if "trainer" in data:
        dropped.append("trainer (except its KFACCallback)" if method.uses_curvature else "trainer")
    settings = _model_settings(_merged_model(data, model), method, owner, dropped)
    measurement = _measurement(settings.get("measurement"), owner)
    if chosen == "dtrak" and measurement.measurement != "loss":  # as DTRAKModule.check_measurement
        raise ConfigError(f"{owner}: method dtrak uses the squared output norm for the queries; drop "
                          "model.measurement.measurement (only measurement.num_draws applies).")
    out: dict[str, Any] = {"kind": DEFAULT_METHOD if method.eigenvalue_correction else chosen}
    if batch_size is not None:
        out["batch_size"] = batch_size
    if "num_draws" in settings:
        draws = settings["num_draws"]
        out.update(draw_scheme=settings["draw_scheme"], draws_per_group=draws, num_groups=1, report_draws=[draws],
                   measurements=[measurement.measurement], query_num_draws=measurement.num_draws,
                   dampings=[float(settings["damping"])], seed=settings["seed"])
    copied = ("query_compression", "relative_influence", "projection_dim", "projection_kind", "projection_seed",
              "clip_model", "clip_weights")
    out.update({key: settings[key] for key in copied if key in settings})
    if method.uses_model:
        out.update(_continuation(data.get("continuation"), owner))
    elif (data.get("continuation") or {}).get("steps"):
        dropped.append("continuation (the method does not use the model)")
    if method.uses_curvature:
        cb = _callback_args(data, owner, dropped)
        scheme = cb["draw_scheme"] or DrawScheme(settings["draw_scheme"]).for_curvature().value
        out["curvature"] = {"num_draws": cb["num_draws"], "fisher_type": cb["fisher_type"],
                            "kfac_approx": cb["kfac_approx"], "mc_samples": cb["mc_samples"],
                            "eigenvalue_correction": bool(cb["eigenvalue_correction"] or method.eigenvalue_correction),
                            "draw_scheme": scheme, "seed": settings["seed"] if cb["seed"] is None else cb["seed"]}
    if dropped:
        print(f"[methods] {name}: leaving out what the benchmark provides or other methods take: "
              f"{', '.join(dict.fromkeys(dropped))}", flush=True)
    return out


def apply_attribute_block(config: Any) -> None:
    """Set the fields of the ``MethodConfig`` ``config`` from its ``attribute_config`` / ``model`` (in place).

    Raises:
        ConfigError: a field besides ``ENTRY_KEYS`` set to another value than the config's (set it in the config).
    """
    from lit_attr.evaluation.config import CurvatureConfig

    settings = attribute_block_settings(config.name, config.attribute_config, config.method, config.model)
    if "curvature" in settings:
        settings["curvature"] = CurvatureConfig(**settings["curvature"])
    defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config)}
    for key, default in defaults.items():
        value = getattr(config, key)
        if key not in ENTRY_KEYS and value != default and value != settings.get(key, default):
            raise ConfigError(f"Method {config.name!r}: {key} comes from attribute_config / model; set it "
                              f"there (attribute.py's model block or KFACCallback) or drop attribute_config.")
    if config.batch_size != defaults["batch_size"]:
        settings.pop("batch_size", None)  # the entry's own scoring batch size wins
    for key, value in settings.items():
        setattr(config, key, value)
