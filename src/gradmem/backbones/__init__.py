"""Backbones: the protocol, the built-in decoder, the Hugging Face wrapper and a builder by name."""

from __future__ import annotations

from typing import Any

from gradmem.backbones.base import Backbone, fingerprint, weights_hash
from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone, LlamaConfig


def build_backbone(spec: dict[str, Any]) -> Backbone:
    """Build a backbone from a JSON-able spec: {"type": "llama", ...LlamaConfig fields} or
    {"type": "hf", "config": {...transformers config dict...}} or {"type": "hf", "path": folder} or
    {"type": "hf", "pretrained": "smollm2-135m" | "gemma3-270m"}; hf specs also take the options of
    gradmem.backbones.adapted (freeze, lora, gradient_checkpointing, bf16), llama specs `bf16`."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind == "llama":
        from gradmem.backbones.adapted import OPTION_KEYS, adapt

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
    raise ValueError(f"unknown backbone type {kind!r}; valid: ['hf', 'llama']")


__all__ = ["Backbone", "HFBackbone", "LlamaBackbone", "LlamaConfig", "build_backbone", "fingerprint", "weights_hash"]
