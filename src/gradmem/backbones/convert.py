"""Convert the built-in decoder into a Hugging Face `LlamaForCausalLM` with the same weights.

Both compute the same function: RMSNorm with a learned scale, rotary positions on the (first
half, second half) pairs of each head (Hugging Face's `rotate_half` convention), a SiLU-gated
MLP and causal softmax attention. The built-in model fuses q/k/v into one projection and gate/up
into another; the conversion splits them. Used by the throughput benchmark (same sizes, same
weights) and by the parity tests.

Numerical note: Hugging Face's Llama computes RMSNorm statistics, rotary angles and the eager
softmax in float32 even when the model is float64, so a float64 comparison agrees to float32
rounding (~1e-6), not to float64 rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from gradmem.backbones.hf import HFBackbone
from gradmem.backbones.llama import LlamaBackbone
from gradmem.core.attention import register_hf_attention


def hf_llama_config(backbone: LlamaBackbone, attn_implementation: str = "eager") -> Any:
    """The `transformers.LlamaConfig` with the built-in decoder's sizes."""
    from transformers import LlamaConfig as HFLlamaConfig

    cfg = backbone.config
    return HFLlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        attn_implementation=attn_implementation,
    )


def hf_state_dict(backbone: LlamaBackbone) -> dict[str, torch.Tensor]:
    """The built-in weights under Hugging Face Llama names (fused projections split)."""
    d = backbone.config.hidden_size
    inter = backbone.config.intermediate_size
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": backbone.embedding.weight,
        "model.norm.weight": backbone.norm.weight,
        "lm_head.weight": backbone.head.weight,
    }
    for i, block in enumerate(backbone.blocks):
        prefix = f"model.layers.{i}."
        q, k, v = block.qkv.weight.split(d, dim=0)  # nn.Linear weight is (out, in): rows are outputs
        gate, up = block.gate_up.weight.split(inter, dim=0)
        out.update(
            {
                prefix + "input_layernorm.weight": block.attn_norm.weight,
                prefix + "self_attn.q_proj.weight": q,
                prefix + "self_attn.k_proj.weight": k,
                prefix + "self_attn.v_proj.weight": v,
                prefix + "self_attn.o_proj.weight": block.out.weight,
                prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
                prefix + "mlp.gate_proj.weight": gate,
                prefix + "mlp.up_proj.weight": up,
                prefix + "mlp.down_proj.weight": block.down.weight,
            }
        )
    return {name: tensor.detach().clone() for name, tensor in out.items()}


def to_hf(backbone: LlamaBackbone, attn_implementation: str = "eager") -> HFBackbone:
    """A Hugging Face Llama backbone computing the same function as `backbone` (same dtype and device)."""
    from transformers import LlamaForCausalLM

    register_hf_attention()  # so attn_implementation="gradmem_sdpa_explicit" resolves
    weight = backbone.head.weight
    # Cast before loading: loading float64 weights into a float32 model would round them.
    model = LlamaForCausalLM(hf_llama_config(backbone, attn_implementation)).to(
        device=weight.device, dtype=weight.dtype
    )
    missing, unexpected = model.load_state_dict(hf_state_dict(backbone), strict=False)
    # With tied embeddings the LM head is the embedding and may be reported either way.
    missing = [m for m in missing if not (backbone.config.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing {missing}, unexpected {unexpected}")
    return HFBackbone(model)
