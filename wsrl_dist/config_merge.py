"""How config layers are applied: strict, typed merging of YAML mappings and `a.b=c` overrides onto the
section dataclasses, and ConfigError, the error every config problem raises.

Generic machinery that knows no section: an unknown key fails naming the dotted key and the nearest
valid name, a value is checked against the field's annotation (int -> float the one conversion; YAML
1.1's 1e-4 string read as a float). Apart from config.py, which composes the sections into RunConfig
and holds the run's own checks, so the config itself reads without the parser. config.py re-exports
ConfigError, merge, parse_override and _read_yaml (callers import them from there).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem, naming the dotted key."""


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float only)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be None")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        raise ConfigError(f"{key}: expected a mapping for section, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value):
            return float(value)  # PyYAML (YAML 1.1) reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported config type {tp}")


def merge(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping onto dataclass `obj` in place, strictly."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {names}"
            raise ConfigError(f"unknown config key '{dotted}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, f"{dotted}.")
        else:
            setattr(obj, key, _coerce(dotted, value, hints[key]))


def parse_override(text: str) -> dict[str, Any]:
    """'a.b.c=value' -> {'a': {'b': {'c': value}}}; the value is parsed as YAML (1e-4, true, [1,2])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data
