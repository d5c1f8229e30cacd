"""What every backbone shares beyond the protocol (gradmem.core.backbone): the size of the state
a backbone keeps for a context, and the fingerprint a memory file is checked against.
"""

from __future__ import annotations

from typing import Any

from gradmem.backbones.mamba import RECURRENT_STATE_FLOATS
from gradmem.core.backbone import Backbone
from gradmem.core.hashing import weights_hash


def context_state_floats(backbone: Backbone, tokens: int) -> int:
    """Floats a backbone keeps to attend to `tokens` tokens of context: its KV cache, 2 x layers x
    tokens x KV heads x head width (grouped-query attention counted), or, for a state-space model,
    its fixed recurrent state. The one formula the methods, the engine and the benchmarks use."""
    described = backbone.describe()
    cfg = described.get("config", described)  # Hugging Face: the config dict; built-in: the fields
    counter = RECURRENT_STATE_FLOATS.get(cfg.get("model_type"))
    if counter is not None:
        return counter(cfg)
    layers = cfg.get("num_layers") or cfg.get("num_hidden_layers") or cfg.get("n_layer")
    heads = cfg.get("num_heads") or cfg.get("num_attention_heads") or cfg.get("n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or backbone.hidden_size // int(heads)
    return 2 * int(layers) * tokens * int(kv_heads) * int(head_dim)


def fingerprint(backbone: Backbone) -> dict[str, Any]:
    """Architecture, sizes and weight hash of a backbone: a memory written by one model is
    meaningless to another, and this is what memory files are checked against."""
    return {
        "architecture": backbone.describe(),
        "hidden_size": backbone.hidden_size,
        "vocab_size": backbone.vocab_size,
        "weights_sha256": weights_hash(backbone),
    }
