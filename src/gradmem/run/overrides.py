"""`--set section.key=value` overrides of a run spec (values parsed as JSON, else kept as strings)."""

from __future__ import annotations

import copy
import json
from typing import Any


def apply_overrides(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key.sub=value` overrides (values parsed as JSON, else kept as strings)."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return spec
