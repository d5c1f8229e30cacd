"""Backbones: the protocol, the built-in decoder, the Hugging Face wrapper and a builder by name."""

from __future__ import annotations

from typing import Any

from gradmem.backbones.base import Backbone, fingerprint, weights_hash
from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone, LlamaConfig


def build_backbone(spec: dict[str, Any]) -> Backbone:
    """Build a backbone from a JSON-able spec: {"type": "llama", ...LlamaConfig fields} or
    {"type": "hf", "config": {...transformers config dict...}} or {"type": "hf", "path": folder}."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "llama":
        return LlamaBackbone(LlamaConfig(**spec))
    if kind == "hf":
        attn = spec.get("attn_implementation", "eager")
        if "path" in spec:
            return HFBackbone.from_pretrained(spec["path"], attn_implementation=attn)
        from transformers import AutoConfig

        config = dict(spec["config"])
        return HFBackbone.from_config(AutoConfig.for_model(config.pop("model_type"), **config), attn)
    raise ValueError(f"unknown backbone type {kind!r}; valid: ['hf', 'llama']")


__all__ = ["Backbone", "HFBackbone", "LlamaBackbone", "LlamaConfig", "build_backbone", "fingerprint", "weights_hash"]
