"""The Backbone protocol: everything GradMem and its methods need from a causal language model.

GradMem never forks a model. It needs to turn token ids into input embeddings, run the decoder
on input embeddings (so memory vectors can be prepended), project hidden states to the
vocabulary, and know the width. Beyond those, the protocol names every capability a caller uses,
so no caller probes a backbone for an attribute:
- `max_positions`: the longest sequence it runs (None: no limit), which bounds a context.
- `decoder_layers()`: the decoder blocks in order, for methods that act inside the layers (ARMT's
  per-layer hooks, fast-weight layers). Each block's first input, positional or the keyword
  `hidden_states`, is its (B, T, D) residual stream, and its output is that stream (or a tuple
  that starts with it). A backbone that cannot offer them raises TypeError saying why.
- `write_mode()`: entered around GradMem's WRITE (write-only LoRA adapters switch on there).
- `uses_bf16(device_type)` and `full_precision()`: whether it computes under bf16 autocast on a
  device kind, and a context in which it does not (the compiled step checks against fp32).
Backbones that have no use for one of them implement the plain default (a no-op context, False).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Backbone(Protocol):
    """A causal decoder seen through input embeddings."""

    hidden_size: int
    vocab_size: int

    @property
    def max_positions(self) -> int | None:
        """Longest sequence (memory prefix included) the backbone runs; None = no limit."""
        ...

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

    def decoder_layers(self) -> nn.ModuleList:
        """The decoder blocks in order; TypeError if per-layer access is impossible for this model."""
        ...

    def write_mode(self) -> AbstractContextManager[None]:
        """Entered around a WRITE: parts that only the writer uses (LoRA adapters) are on inside."""
        ...

    def uses_bf16(self, device_type: str) -> bool:
        """Whether the decoder runs under bf16 autocast on this device kind ("cpu", "cuda")."""
        ...

    def full_precision(self) -> AbstractContextManager[None]:
        """Inside: the decoder computes in fp32 whatever its bf16 option says."""
        ...

    def supports_double_backward(self) -> bool:
        """Whether second-order gradients can flow through this model's attention."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able architecture description: enough to rebuild it and to fingerprint it."""
        ...
