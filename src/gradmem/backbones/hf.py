"""Any Hugging Face causal LM as a Backbone, wrapped rather than copied.

Second order needs an attention implementation with a double backward: `eager` has one, the
fused `sdpa` / `flash_attention_*` kernels do not. `GradMem` asks `supports_double_backward()`
and refuses second order with a clear error instead of silently changing the mode.

It does not declare incremental decoding (gradmem.core.backbone.IncrementalDecoding), so a
reconstruction re-runs the whole sequence per token: the decoder's cache argument is named
`past_key_values` in transformers 4.x and `cache` in 5.x, a state-space model (Mamba) keeps no
keys and values, and gradmem's own attention kernels align the causal mask top-left, which is
wrong for queries after a cache; the last two give wrong hidden states without an error.
"""

from __future__ import annotations

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
