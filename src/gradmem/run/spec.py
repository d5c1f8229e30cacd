"""The run spec: one JSON object with a section per part of a run, validated in one place.

    {"task": {"name": "kv", ...}, "backbone": {"name": "llama", ...},
     "method": {"name": "gradmem", ...}, "train": {...}, "reference_compat": false}

`name` picks the registered kind in the task, backbone and method sections (gradmem.tasks.TASKS,
gradmem.backbones.BACKBONES, gradmem.methods.METHODS); the other keys are that kind's config.
`validate_spec` checks every section against the dataclass that will read it before anything is
built. Backbone sections written before `name` was the one discriminator say `type`:
`upgrade_spec` converts them once, where a spec is read from a file, with a warning.
"""

from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any, TypedDict

from gradmem.backbones import BACKBONES
from gradmem.backbones.adapted import OPTION_KEYS, BackboneOptions
from gradmem.core.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.core.errors import ConfigError
from gradmem.methods import METHODS
from gradmem.run.fields import check_fields, shown, unknown_keys
from gradmem.run.train_config import TrainConfig
from gradmem.tasks import TASKS

SECTIONS = ("task", "backbone", "method", "train")  # task, backbone and method are required
FLAGS = ("reference_compat",)  # top-level true/false switches (gradmem.run.reference_compat)


class RunSpec(TypedDict, total=False):
    """A run spec as JSON gives it: each section a plain object, read by its config dataclass."""

    task: dict[str, Any]  # {"name": a TASKS key, ...its config}
    backbone: dict[str, Any]  # {"name": a BACKBONES key, ...its config and options}
    method: dict[str, Any]  # {"name": a METHODS key, ...its config}
    train: dict[str, Any]  # TrainConfig fields (optional)
    reference_compat: bool  # the authors' code's choices (gradmem.run.reference_compat)


class LegacySpecWarning(UserWarning):
    """A spec read from a file spelled the backbone's kind with the old `type` key."""


PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)  # src/gradmem


def _caller_stacklevel() -> int:
    """The `stacklevel` that makes a warning raised by the function calling this point at the first
    line outside gradmem: the user's line that read the spec or loaded the checkpoint, however
    many gradmem functions lie between (Python 3.10 has no `skip_file_prefixes`)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


def upgrade_spec(spec: Any, source: str = "a run spec") -> Any:
    """`spec` with a legacy backbone `type` key renamed to `name` (a copy; a warning says so).
    Anything that is not a run spec is returned as it is, for `validate_spec` to name."""
    backbone = spec.get("backbone") if isinstance(spec, dict) else None
    if not isinstance(backbone, dict) or "type" not in backbone:
        return spec
    if "name" in backbone and backbone["name"] != backbone["type"]:
        raise ConfigError(f"backbone spec names two kinds: name={backbone['name']!r}, type={backbone['type']!r}")
    warnings.warn(
        f"{source}: backbone key 'type' is read as 'name' (the one discriminator key); save the spec again",
        LegacySpecWarning,
        stacklevel=_caller_stacklevel(),
    )
    spec = copy.deepcopy(spec)
    kind = spec["backbone"].pop("type")
    spec["backbone"] = {"name": spec["backbone"].pop("name", kind), **spec["backbone"]}
    return spec


def read_spec(path: str | Path, what: str = "config") -> Any:
    """The JSON of a spec file (upgraded by `upgrade_spec`); ConfigError if it cannot be read."""
    try:
        spec = json.loads(read_limited_text(path, SMALL_LIMIT, f"the {what}"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {what} {path}: {err}") from err
    return upgrade_spec(spec, str(path))


def validate_spec(spec: Any) -> None:
    """ConfigError unless `spec` is a run spec whose every key and value type is known."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a run spec must be a JSON object with sections {list(SECTIONS)}, got {shown(spec)}")
    unknown_keys(spec, SECTIONS + FLAGS, "the run spec")
    for flag in FLAGS:
        if flag in spec and not isinstance(spec[flag], bool):
            raise ConfigError(f"{flag} must be true or false, got {shown(spec[flag])}")
    for part in SECTIONS:
        if part in spec and not isinstance(spec[part], dict):
            raise ConfigError(f"section {part!r} must be an object, got {shown(spec[part])}")
        if part not in spec and part != "train":
            raise ConfigError(f"run spec needs a {part!r} section (a JSON object); has {sorted(spec)}")
    task_config = _check_task(spec["task"])
    _check_method(spec["method"])
    _check_backbone(spec["backbone"])
    train = spec.get("train", {})
    check_fields(TrainConfig, train, "train")
    for i, stage in enumerate(train.get("curriculum") or []):
        check_fields(task_config, stage, f"train.curriculum[{i}]")


def _check_task(section: dict[str, Any]) -> type:
    """The task's config class, once the section is checked against it."""
    settings = dict(section)
    name = settings.pop("name", None)
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    config = TASKS[name][1]
    check_fields(config, settings, "task")
    return config


def _check_method(section: dict[str, Any]) -> None:
    settings = dict(section)
    name = settings.pop("name", None)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    check_fields(METHODS[name][1], settings, "method")


def _check_backbone(section: dict[str, Any]) -> None:
    if "type" in section:
        raise ConfigError("backbone: key 'type' is the old spelling of 'name'; read the spec with read_spec")
    settings = dict(section)
    name = settings.pop("name", None)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)} (section 'backbone', key 'name')")
    bf16 = settings.get("bf16", False)
    if not (isinstance(bf16, bool) or bf16 == "auto"):  # 1 or "yes" would pass a plain type check
        raise ConfigError(f'backbone.bf16 must be true, false or "auto", got {shown(bf16)}')
    config = BACKBONES[name].config
    if config is not None:  # None: a config another library reads (transformers), left to it
        check_fields(config, {k: v for k, v in settings.items() if k not in OPTION_KEYS}, "backbone")
        check_fields(BackboneOptions, {k: v for k, v in settings.items() if k in OPTION_KEYS}, "backbone")
