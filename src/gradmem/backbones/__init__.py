"""Backbones: the protocol, the built-in decoder, the Hugging Face wrapper and a plain-dict
registry from a spec's `name` to its builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradmem.backbones.adapted import OPTION_KEYS, BackboneOptions, adapt
from gradmem.backbones.base import fingerprint
from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone, LlamaConfig
from gradmem.backbones.pretrained import resolve_model_path
from gradmem.core.backbone import Backbone
from gradmem.core.hashing import weights_hash


def _build_llama(spec: dict[str, Any], vocab_size: int | None) -> Backbone:
    if vocab_size is not None:
        spec.setdefault("vocab_size", vocab_size)
        if spec["vocab_size"] < vocab_size:
            raise ValueError(f"backbone vocab {spec['vocab_size']} < tokenizer vocab {vocab_size}")
    options = {k: spec.pop(k) for k in OPTION_KEYS if k in spec}
    backbone = LlamaBackbone(LlamaConfig(**spec))
    parsed = BackboneOptions(**options)
    if parsed.freeze or parsed.lora or parsed.gradient_checkpointing:
        raise ValueError(
            "the built-in llama backbone takes only the bf16 option (the others are for Hugging Face models)"
        )
    return adapt(backbone, options)


def _build_hf(spec: dict[str, Any], vocab_size: int | None) -> Backbone:
    attn = spec.get("attn_implementation", "eager")
    if "path" in spec or "pretrained" in spec:  # local folder, or a packaged model converted once
        return adapt(HFBackbone.from_pretrained(str(resolve_model_path(spec)), attn_implementation=attn), spec)
    from transformers import AutoConfig

    config = dict(spec["config"])
    return adapt(HFBackbone.from_config(AutoConfig.for_model(config.pop("model_type"), **config), attn), spec)


@dataclass(frozen=True)
class BackboneKind:
    """A registered backbone: how a spec section builds it and what checks that section."""

    build: Callable[[dict[str, Any], int | None], Backbone]  # (spec without `name`, tokenizer vocab) -> backbone
    config: type | None  # dataclass the non-option keys are checked against; None: another library reads them


BACKBONES: dict[str, BackboneKind] = {
    "llama": BackboneKind(_build_llama, LlamaConfig),
    "hf": BackboneKind(_build_hf, None),
}


def build_backbone(spec: dict[str, Any], vocab_size: int | None = None) -> Backbone:
    """Build a backbone from a JSON-able spec: {"name": "llama", ...LlamaConfig fields} or
    {"name": "hf", "config": {...transformers config dict...}} or {"name": "hf", "path": folder} or
    {"name": "hf", "pretrained": "smollm2-135m" | "gemma3-270m"}; hf specs also take the options of
    gradmem.backbones.adapted (freeze, lora, gradient_checkpointing, bf16), llama specs `bf16`.
    `vocab_size` is the tokenizer's: a built-in llama without one in its spec takes it, and a
    smaller one is refused (ids past the embedding table would index out of range)."""
    settings = dict(spec)
    name = settings.pop("name", None)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    backbone = BACKBONES[name].build(settings, vocab_size)
    if not isinstance(backbone, Backbone):  # a new registration that misses part of the contract
        raise TypeError(f"{type(backbone).__name__} does not implement gradmem.core.backbone.Backbone")
    return backbone


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneKind",
    "HFBackbone",
    "LlamaBackbone",
    "LlamaConfig",
    "build_backbone",
    "fingerprint",
    "weights_hash",
]
