"""Any Hugging Face causal LM as a Backbone, wrapped rather than copied.

Second order needs an attention implementation with a double backward: `eager` has one, the
fused `sdpa` / `flash_attention_*` kernels do not. `GradMem` asks `supports_double_backward()`
and refuses second order with a clear error instead of silently changing the mode.

It decodes incrementally (gradmem.core.backbone.IncrementalDecoding) through transformers' own
KV cache when that is sound: attention models under transformers' `eager` or `sdpa` attention,
which place the causal mask after the cached positions. gradmem's own attention kernels align it
top-left (right for a whole sequence, wrong for queries after a cache) and a state-space model
(Mamba) keeps no keys and values, so those re-run the whole sequence instead. The decoder's cache
argument is `cache` in transformers 5.x and `past_key_values` in 4.x; the signature says which.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn

from gradmem.core.attention import HF_KERNELS, register_hf_attention
from gradmem.core.backbone import PlainBackboneDefaults

# gradmem's fused-forward / explicit-backward kernels are registered with transformers on demand.
DOUBLE_BACKWARD_ATTENTION = {"eager", *HF_KERNELS}


class HFBackbone(PlainBackboneDefaults, nn.Module):
    """Wraps a `transformers` causal LM (`AutoModelForCausalLM`) into the Backbone protocol."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])

    @classmethod
    def from_config(cls, config: Any, attn_implementation: str = "eager") -> HFBackbone:
        """Build a randomly initialised model from a `transformers` config."""
        from transformers import AutoModelForCausalLM

        register_hf_attention()
        return cls(AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation))

    @classmethod
    def from_pretrained(cls, path: str, attn_implementation: str = "eager", **kwargs: Any) -> HFBackbone:
        """Load a local Hugging Face model folder."""
        from transformers import AutoModelForCausalLM

        register_hf_attention()
        return cls(AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation, **kwargs))

    @property
    def attn_implementation(self) -> str:
        return str(getattr(self.model.config, "_attn_implementation", None) or "eager")

    @property
    def max_positions(self) -> int | None:
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return int(limit) if limit else None

    def embed(self, ids: Tensor) -> Tensor:
        # The embedding module applies any model-specific scaling (Gemma multiplies by sqrt(d)).
        return self.model.get_input_embeddings()(ids)

    def hidden(self, embeds: Tensor) -> Tensor:
        # base_model is the decoder without the LM head (model.model / model.transformer).
        # No attention mask: gradmem right-pads, so causal attention already hides pads.
        out = self.model.base_model(inputs_embeds=embeds, use_cache=False)
        return out.last_hidden_state

    def logits(self, hidden: Tensor) -> Tensor:
        return self.model.get_output_embeddings()(hidden)

    def decodes_incrementally(self) -> bool:
        return (
            self.attn_implementation in ("eager", "sdpa")
            and getattr(self.model.config, "num_attention_heads", None) is not None
            and self._cache_keyword() is not None
        )

    def prefill(self, embeds: Tensor) -> tuple[Tensor, Any]:
        return self._run_cached(embeds, None)

    def extend(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:
        return self._run_cached(embeds, cache)

    def _cache_keyword(self) -> str | None:
        parameters = inspect.signature(self.model.base_model.forward).parameters
        return next((name for name in ("cache", "past_key_values") if name in parameters), None)

    def _run_cached(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """(B, T, D) embeddings of the next positions -> (their hidden states, the grown cache);
        transformers numbers the positions from the cache's length."""
        keyword = self._cache_keyword()
        assert keyword is not None, "decodes_incrementally() said no"
        extra = {} if cache is None else {keyword: cache}
        out = self.model.base_model(inputs_embeds=embeds, use_cache=True, **extra)
        grown = out.get("cache")
        return out.last_hidden_state, out.get("past_key_values") if grown is None else grown

    def decoder_layers(self) -> nn.ModuleList:
        # Llama-family and Mamba decoders keep their blocks in `layers`, GPT-2 in `h`.
        decoder = self.model.base_model
        for name in ("layers", "h"):
            layers = getattr(decoder, name, None)
            if isinstance(layers, nn.ModuleList):
                return layers
        raise TypeError(f"{type(decoder).__name__} keeps its decoder layers in neither `layers` nor `h`")

    def head_weight(self) -> Tensor:
        return self.model.get_output_embeddings().weight

    def supports_double_backward(self) -> bool:
        return self.attn_implementation in DOUBLE_BACKWARD_ATTENTION

    def describe(self) -> dict[str, Any]:
        config = self.model.config.to_dict()
        # Runtime choices that do not change the function the model computes.
        for key in ("_attn_implementation", "attn_implementation", "torch_dtype", "dtype", "transformers_version"):
            config.pop(key, None)
        return {"name": "hf", "model_type": config.get("model_type"), "config": config}
