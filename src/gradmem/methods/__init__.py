"""Memory methods behind one protocol (gradmem.core.method.MemoryMethod) and one plain-dict
registry. READ is shared by all methods (gradmem.methods.model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gradmem.core.backbone import Backbone
from gradmem.core.method import MemoryMethod
from gradmem.core.write import WriteOptions
from gradmem.methods.armt import ARMT, ARMTConfig
from gradmem.methods.context import FullContext, NoConfig, NoContext
from gradmem.methods.gradmem import GradMem, GradMemConfig
from gradmem.methods.kv_prefix import KVPrefix, KVPrefixConfig
from gradmem.methods.lact import LaCT, LaCTConfig
from gradmem.methods.rmt import RMT, RMTConfig
from gradmem.methods.ttt_linear import TTTLinear, TTTLinearConfig

# name -> (method class, its config class)
METHODS: dict[str, tuple[Callable[..., nn.Module], type]] = {
    "gradmem": (GradMem, GradMemConfig),
    "full_context": (FullContext, NoConfig),
    "no_context": (NoContext, NoConfig),
    "rmt": (RMT, RMTConfig),
    "armt": (ARMT, ARMTConfig),
    "ttt_linear": (TTTLinear, TTTLinearConfig),
    "lact": (LaCT, LaCTConfig),
    "kv_prefix": (KVPrefix, KVPrefixConfig),
}


def build_method(name: str, backbone: Backbone, config: dict[str, Any] | None = None) -> MemoryMethod:
    """Build a method by registry name from a JSON-able config dict."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {sorted(METHODS)}")
    cls, config_cls = METHODS[name]
    try:
        cfg = config_cls(**(config or {}))
    except TypeError as err:
        raise ValueError(f"bad config for method {name!r}: {err}") from err
    method = cls(backbone, cfg)
    if not isinstance(method, MemoryMethod):  # a new registration that misses part of the contract
        raise TypeError(f"{cls.__name__} does not implement gradmem.core.method.MemoryMethod")
    return method


__all__ = [
    "METHODS",
    "MemoryMethod",
    "WriteOptions",
    "build_method",
    "GradMem",
    "GradMemConfig",
    "FullContext",
    "NoContext",
    "RMT",
    "RMTConfig",
    "ARMT",
    "ARMTConfig",
    "TTTLinear",
    "TTTLinearConfig",
    "LaCT",
    "LaCTConfig",
    "KVPrefix",
    "KVPrefixConfig",
]
