"""Memory methods behind one protocol and one plain-dict registry.

A method is an nn.Module with `write(backbone, context, steps=None, lr=None, measure_final=False)
-> Memory`, `state_floats()` and `export_config()`. READ is shared by all methods (gradmem.model).
A method whose memory acts inside the decoder layers also has `reading(backbone, memory)`: a context
manager that READ and generate enter around each backbone call (ARMT installs per-layer hooks).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from gradmem.backbones.base import Backbone
from gradmem.methods.armt import ARMT, ARMTConfig
from gradmem.methods.context import FullContext, NoConfig, NoContext
from gradmem.methods.gradmem import GradMem, GradMemConfig
from gradmem.methods.rmt import RMT, RMTConfig

# name -> (method class, its config class)
METHODS: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "gradmem": (GradMem, GradMemConfig),
    "full_context": (FullContext, NoConfig),
    "no_context": (NoContext, NoConfig),
    "rmt": (RMT, RMTConfig),
    "armt": (ARMT, ARMTConfig),
}


def build_method(name: str, backbone: Backbone, config: dict[str, Any] | None = None) -> nn.Module:
    """Build a method by registry name from a JSON-able config dict."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    cls, config_cls = METHODS[name]
    try:
        cfg = config_cls(**(config or {}))
    except TypeError as err:
        raise ValueError(f"bad config for method {name!r}: {err}") from err
    return cls(backbone, cfg)


__all__ = ["METHODS", "build_method", "GradMem", "GradMemConfig", "FullContext", "NoContext", "RMT", "RMTConfig",
           "ARMT", "ARMTConfig"]
