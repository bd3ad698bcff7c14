"""Typed validation of configs: a YAML mapping becomes the config's dataclasses, and unknown
keys, wrong types and retired keys are one ConfigError naming the file and the dotted key. Generic
over the schema (rmio.config's ``Config``, an ablation sweep's ``AblationConfig``, ...), so
rmio/config.py keeps only what the scenario configs themselves are."""

from __future__ import annotations

import types
from dataclasses import fields, is_dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from rmio.errors import ConfigError

# Keys configs no longer have, and why. A scenario file or a --set override that names one is
# refused like any unknown key; configs recorded before it was retired (a run directory's
# config.yaml, a checkpoint's config) still load without it, since it never had an effect.
RETIRED_KEYS: dict[str, str] = {
    "world_model.train.device": "it was never read; the device is each command's --device option",
}


_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    list: "a list",
    tuple: "a list",
    dict: "a mapping",
}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return _NAMES.get(get_origin(tp) or tp, getattr(tp, "__name__", str(tp)))


def _coerce(tp: Any, value: Any, key: str, src: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if is_dataclass(tp):
        return build_dataclass(tp, value, src, key)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, src)
            except ConfigError as exc:
                errors.append(exc)
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{src}: key '{key}' must be {names}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{src}: key '{key}' must be {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, list | tuple):
            item = args[0] if args else Any
            items = [_coerce(item, v, f"{key}[{i}]", src) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    else:  # pragma: no cover - a schema author used a type this validator does not know
        raise TypeError(f"config schema type {tp!r} is not supported")
    got = f"{value!r} ({type(value).__name__})"
    raise ConfigError(f"{src}: key '{key}' must be {_type_name(tp)}, got {got}")


def build_dataclass(cls: type, data: Any, src: str, prefix: str = "") -> Any:
    """Build ``cls`` from a mapping, rejecting unknown keys and values of the wrong type."""
    where = prefix or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: '{where}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key in names:
            kwargs[key] = _coerce(hints[key], value, dotted, src)
        elif dotted not in RETIRED_KEYS:  # a retired key here comes from a recorded config: dropped
            raise ConfigError(f"{src}: unknown key '{dotted}' (known here: {', '.join(names)})")
    return cls(**kwargs)


def _holds(raw: dict[str, Any], dotted: str) -> bool:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def refuse_retired(raw: dict[str, Any], src: str) -> None:
    """A user's file or override naming a retired key is refused with the reason it went (a
    recorded config only has it dropped, by :func:`build_dataclass`)."""
    for key, why in RETIRED_KEYS.items():
        if _holds(raw, key):
            raise ConfigError(f"{src}: unknown key '{key}' (removed: {why})")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}`` (dotted keys as --set writes them)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
