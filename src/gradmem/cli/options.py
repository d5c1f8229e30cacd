"""Command-line options generated from config dataclasses, so a default or a help text is written once.

Each field of a config dataclass carries its default and a trailing `# comment`; `add_options` turns
the fields into `--field-name` options with that default and the comment as help, and `from_args`
builds the dataclass back from the parsed arguments. A field may keep an older, shorter flag as an
alias (`aliases={"rate_per_second": "--rate"}`), so existing command lines keep working.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# `    name: type = default  # comment` inside a class body
_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


def field_comments(cls: type) -> dict[str, str]:
    """The trailing comment of each annotated field in the source of `cls` (empty if none)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (frozen or interactive): options just have no help
        return {}
    return {m.group(1): m.group(2) for m in map(_FIELD_COMMENT.match, source.splitlines()) if m}


def _scalar_type(hint: Any) -> type | None:
    """int / float / str for `X` or `X | None`; None for anything else (not a command-line value)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else None


def option_fields(cls: type, only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of `cls` that become options: scalar ones, restricted to `only` and minus `skip`."""
    hints = typing.get_type_hints(cls)
    chosen = set(only) if only is not None else None
    return [
        f
        for f in dataclasses.fields(cls)
        if (chosen is None or f.name in chosen) and f.name not in set(skip) and _scalar_type(hints[f.name])
    ]


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    aliases: Mapping[str, str] | None = None,
    help_extra: Mapping[str, str] | None = None,
) -> None:
    """Add one `--field-name` option per scalar field of the dataclass `cls` (its default, its comment
    as help). A bool field defaulting to False becomes a flag; `aliases` adds an older flag name;
    `help_extra` appends to a field's help."""
    hints, comments = typing.get_type_hints(cls), field_comments(cls)
    aliases, help_extra = aliases or {}, help_extra or {}
    for f in option_fields(cls, only, skip):
        flags = [f"--{f.name.replace('_', '-')}"] + ([aliases[f.name]] if f.name in aliases else [])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        text = " ".join(filter(None, [comments.get(f.name), help_extra.get(f.name)])) or None
        kind = _scalar_type(hints[f.name])
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", default=default, help=text)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=default, help=text)


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """An instance of `cls` from the options `add_options` added (those present in `args`), with
    `overrides` taking precedence."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**(values | overrides))


def _number_list(text: str, kind: type, example: str) -> list:
    try:
        values = [kind(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, e.g. {example}; got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    """argparse type of a comma-separated list of integers ("1,2,4"), with a usage error otherwise."""
    return _number_list(text, int, "1,2,4")


def float_list(text: str) -> list[float]:
    """argparse type of a comma-separated list of numbers ("0.01,0.1"), with a usage error otherwise."""
    return _number_list(text, float, "0.01,0.1")
