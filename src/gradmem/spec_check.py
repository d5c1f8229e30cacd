"""Validation of a run spec against the config dataclasses that will read it.

Each section is checked against its dataclass before anything is built: an unknown key is named
together with the valid keys, a value of the wrong type (a string or 1.5 for an integer, a
non-finite number, a list where a section belongs) is named with the type it needs. The values'
ranges are left to each dataclass's own __post_init__.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

from gradmem.errors import ConfigError

SECTIONS = ("task", "backbone", "method", "train")  # task, backbone and method are required
FLAGS = ("reference_compat",)  # top-level true/false switches (gradmem.reference_compat)
TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a finite number",
    str: "a string",
    list: "a list",
    tuple: "a list",
    dict: "an object",
}


def validate_spec(spec: Any) -> None:
    """ConfigError unless `spec` is a run spec whose every key and value type is known."""
    from gradmem.backbones import backbone_name
    from gradmem.backbones.adapted import OPTION_KEYS, BackboneOptions
    from gradmem.backbones.llama import LlamaConfig
    from gradmem.methods import METHODS
    from gradmem.tasks import TASKS
    from gradmem.train import TrainConfig

    if not isinstance(spec, dict):
        raise ConfigError(f"a run spec must be a JSON object with sections {list(SECTIONS)}, got {_kind(spec)}")
    _unknown(spec, SECTIONS + FLAGS, "the run spec")
    for flag in FLAGS:
        if flag in spec and not isinstance(spec[flag], bool):
            raise ConfigError(f"{flag} must be true or false, got {_kind(spec[flag])}")
    for part in SECTIONS:
        if part in spec and not isinstance(spec[part], dict):
            raise ConfigError(f"section {part!r} must be an object, got {_kind(spec[part])}")
        if part not in spec and part != "train":
            raise ConfigError(f"run spec needs a {part!r} section (a JSON object); has {sorted(spec)}")
    task = dict(spec["task"])
    name = task.pop("name", None)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    task_config = _config_class(TASKS[name])
    check_fields(task_config, task, "task")
    method = dict(spec["method"])
    method_name = method.pop("name", None)
    if method_name not in METHODS:
        raise ConfigError(f"unknown method {method_name!r}; valid: {sorted(METHODS)}")
    check_fields(METHODS[method_name][1], method, "method")
    backbone = dict(spec["backbone"])
    kind = backbone_name(backbone)
    if kind not in ("llama", "hf"):
        raise ConfigError(f"unknown backbone {kind!r}; valid: ['hf', 'llama'] (section 'backbone', key 'name')")
    bf16 = backbone.get("bf16", False)
    if not (isinstance(bf16, bool) or bf16 == "auto"):  # 1 or "yes" would pass a plain type check
        raise ConfigError(f'backbone.bf16 must be true, false or "auto", got {_kind(bf16)}')
    if kind == "llama":  # hf backbones take a transformers config: left to transformers
        fields = {k: v for k, v in backbone.items() if k not in ("name", "type", *OPTION_KEYS)}
        check_fields(LlamaConfig, fields, "backbone")
        check_fields(BackboneOptions, {k: v for k, v in backbone.items() if k in OPTION_KEYS}, "backbone")
    train = spec.get("train", {})
    check_fields(TrainConfig, train, "train")
    for i, stage in enumerate(train.get("curriculum") or []):
        check_fields(task_config, stage, f"train.curriculum[{i}]")


def check_fields(cls: type, values: Any, where: str) -> None:
    """ConfigError unless `values` is a dict of fields of dataclass `cls` with values of their types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be an object, got {_kind(values)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    _unknown(values, fields, where)
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        _check_type(value, hints[key], f"{where}.{key}")


def _unknown(values: dict, valid: Any, where: str) -> None:
    unknown = sorted(str(k) for k in values if k not in valid)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(sorted(valid))}"
        )


def _check_type(value: Any, hint: Any, where: str) -> None:
    if _fits(value, hint, where):
        return
    raise ConfigError(f"{where} must be {_describe(hint)}, got {_kind(value)}")


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


def _kind(value: Any) -> str:
    shown = repr(value)
    return f"{shown if len(shown) <= 40 else shown[:37] + '...'} ({type(value).__name__})"


def _config_class(task_cls: type) -> type:
    """The config dataclass a task class takes as `config` (the task registry maps names to classes)."""
    hint = typing.get_type_hints(task_cls.__init__)["config"]
    return next(a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a))
