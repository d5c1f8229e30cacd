"""The Backbone protocol: the four things GradMem needs from a causal language model.

GradMem never forks a model. It needs to turn token ids into input embeddings, run the
decoder on input embeddings (so memory vectors can be prepended), project hidden states to the
vocabulary, and know the width. Any causal LM that offers these works.

Optional: `decoder_layers()` -> the decoder blocks in order (an nn.ModuleList), for methods that act
inside the layers (ARMT reads and writes an associative memory at every layer through forward
hooks). Each block's first input, positional or the keyword `hidden_states`, is its (B, T, D)
residual stream, and its output is that stream (or a tuple that starts with it).
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Backbone(Protocol):
    """A causal decoder seen through input embeddings."""

    hidden_size: int
    vocab_size: int

    def embed(self, ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, D) input embeddings."""
        ...

    def hidden(self, embeds: Tensor) -> Tensor:
        """(B, T, D) input embeddings -> (B, T, D) final (normalised) hidden states, causal."""
        ...

    def logits(self, hidden: Tensor) -> Tensor:
        """(..., D) hidden states -> (..., V) next-token logits with the LM head."""
        ...

    def head_weight(self) -> Tensor:
        """(V, D) weight of the LM head (a WRITE head is initialised as a copy of it)."""
        ...

    def supports_double_backward(self) -> bool:
        """Whether second-order gradients can flow through this model's attention."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able architecture description: enough to rebuild it and to fingerprint it."""
        ...


def decoder_layers(backbone: Backbone) -> nn.ModuleList:
    """The backbone's decoder blocks, or a TypeError naming what is missing."""
    accessor = getattr(backbone, "decoder_layers", None)
    if accessor is None:
        raise TypeError(
            f"{type(backbone).__name__} does not expose decoder_layers(); this method acts inside "
            "the decoder layers and needs it (LlamaBackbone and HFBackbone have it)"
        )
    return accessor()


def tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (any dtype, any device)."""
    return hashlib.sha256(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over (name, shape, dtype, bytes) of each tensor, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, shape, dtype, bytes): identifies the weights."""
    return tensors_sha256(module.state_dict())


def context_state_floats(backbone: Backbone, tokens: int) -> int:
    """Floats a backbone keeps to attend to `tokens` tokens of context: its KV cache, 2 x layers x
    tokens x KV heads x head width (grouped-query attention counted), or, for a state-space model,
    its fixed recurrent state. The one formula the methods, the engine and the benchmarks use."""
    from gradmem.backbones.mamba import RECURRENT_STATE_FLOATS

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
    assert isinstance(backbone, nn.Module)
    return {
        "architecture": backbone.describe(),
        "hidden_size": backbone.hidden_size,
        "vocab_size": backbone.vocab_size,
        "weights_sha256": weights_hash(backbone),
    }
