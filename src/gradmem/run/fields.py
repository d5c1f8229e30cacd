"""Checking a JSON object against the config dataclass that will read it.

An unknown key is named together with the valid keys, a value of the wrong type (a string or 1.5
for an integer, a non-finite number, a list where a section belongs) is named with the type it
needs. The values' ranges are left to each dataclass's own __post_init__. gradmem.run.spec applies
it to every section of a run spec.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

from gradmem.core.errors import ConfigError

TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    list: "a list",
    tuple: "a list",
    dict: "an object",
}


def check_fields(cls: type, values: Any, where: str) -> None:
    """ConfigError unless `values` is a dict of fields of dataclass `cls` with values of their types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be an object, got {shown(values)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown_keys(values, fields, where)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        _check_type(value, hints[key], f"{where}.{key}")


def unknown_keys(values: dict, valid: Any, where: str) -> None:
    """ConfigError naming the keys of `values` not in `valid`, and the valid ones."""
    unknown = sorted(str(k) for k in values if k not in valid)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(valid))}"
        )


def _check_type(value: Any, hint: Any, where: str) -> None:
    if _fits(value, hint, where):
        return
    raise ConfigError(f"{where} must be {_describe(hint)}, got {shown(value)}")


def _fits(value: Any, hint: Any, where: str) -> bool:
    """Whether `value` is of type `hint`; nested dataclasses are checked (and raise) in place."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_fits(value, arm, where) for arm in args)
    if hint is type(None):
        return value is None
    if dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            check_fields(hint, value, where)
            return True
        return isinstance(value, hint)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (origin is list or Ellipsis in args or len(args) == 1) else None
        if origin is tuple and args and Ellipsis not in args:
            return len(value) == len(args) and all(_fits(v, a, where) for v, a in zip(value, args))
        return item is None or all(_fits(v, item, where) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if dataclasses.is_dataclass(hint):
        return "an object"
    if origin is tuple and args and Ellipsis not in args:
        return f"a list of {len(args)}: " + ", ".join(_describe(a) for a in args)
    return TYPE_NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def shown(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to 40 characters, and its type."""
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"
