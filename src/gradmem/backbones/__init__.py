"""Backbones: the protocol, the built-in decoder, the Hugging Face wrapper and a builder by name."""

from __future__ import annotations

from typing import Any

from gradmem.backbones.base import Backbone, fingerprint, weights_hash
from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone, LlamaConfig


def backbone_name(spec: dict[str, Any]) -> Any:
    """The backbone kind a spec section names: its `name`, or `type` in specs and checkpoints saved
    before the sections shared one discriminator key."""
    if "name" in spec and "type" in spec and spec["name"] != spec["type"]:
        raise ValueError(f"backbone spec names two kinds: name={spec['name']!r}, type={spec['type']!r}")
    return spec.get("name", spec.get("type"))


def build_backbone(spec: dict[str, Any], vocab_size: int | None = None) -> Backbone:
    """Build a backbone from a JSON-able spec: {"name": "llama", ...LlamaConfig fields} or
    {"name": "hf", "config": {...transformers config dict...}} or {"name": "hf", "path": folder} or
    {"name": "hf", "pretrained": "smollm2-135m" | "gemma3-270m"}; hf specs also take the options of
    gradmem.backbones.adapted (freeze, lora, gradient_checkpointing, bf16), llama specs `bf16`.
    `vocab_size` is the tokenizer's: a built-in llama without one in its spec takes it, and a
    smaller one is refused (ids past the embedding table would index out of range)."""
    kind = backbone_name(spec)
    spec = {k: v for k, v in spec.items() if k not in ("name", "type")}
    if kind == "llama":
        from gradmem.backbones.adapted import OPTION_KEYS, adapt

        if vocab_size is not None:
            spec.setdefault("vocab_size", vocab_size)
            if spec["vocab_size"] < vocab_size:
                raise ValueError(f"backbone vocab {spec['vocab_size']} < tokenizer vocab {vocab_size}")
        options = {k: spec.pop(k) for k in OPTION_KEYS if k in spec}
        return adapt(LlamaBackbone(LlamaConfig(**spec)), options)
    if kind == "hf":
        from gradmem.backbones.adapted import adapt
        from gradmem.backbones.pretrained import resolve_model_path

        attn = spec.get("attn_implementation", "eager")
        if "path" in spec or "pretrained" in spec:  # local folder, or a packaged model converted once
            return adapt(HFBackbone.from_pretrained(str(resolve_model_path(spec)), attn_implementation=attn), spec)
        from transformers import AutoConfig

        config = dict(spec["config"])
        return adapt(HFBackbone.from_config(AutoConfig.for_model(config.pop("model_type"), **config), attn), spec)
    raise ValueError(f"unknown backbone {kind!r}; valid: ['hf', 'llama']")


__all__ = [
    "Backbone",
    "HFBackbone",
    "LlamaBackbone",
    "LlamaConfig",
    "backbone_name",
    "build_backbone",
    "fingerprint",
    "weights_hash",
]
