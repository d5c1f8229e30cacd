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
Backbones that have no use for them inherit the plain defaults of `PlainBackboneDefaults`.

One capability is optional, because not every model has it: `IncrementalDecoding`, running a
prefix once and then only the new positions against a cache of its keys and values (a token-by-token
decode then costs one position per token instead of the whole sequence again). Whether a backbone
has it is asked once, through `incremental_decoding`.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
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


class PlainBackboneDefaults:
    """The three options a backbone without options answers plainly: nothing is WRITE-only, it
    computes in its weights' dtype (bf16 autocast is an option of gradmem.backbones.adapted), so
    full precision changes nothing."""

    def write_mode(self) -> AbstractContextManager[None]:
        return nullcontext()

    def uses_bf16(self, device_type: str) -> bool:
        return False

    def full_precision(self) -> AbstractContextManager[None]:
        return nullcontext()


@runtime_checkable
class IncrementalDecoding(Protocol):
    """A backbone that can keep the keys and values of the positions it ran and run only new ones.

    The cache is the backbone's own object (per-layer keys and values); callers only pass it back.
    Both methods compute what `hidden` computes for the same whole sequence (same precision
    handling), up to floating-point rounding; per-layer hooks of a method's `reading` are not run.
    """

    def decodes_incrementally(self) -> bool:
        """Whether this instance really can (a wrapper's answer depends on the model it wraps)."""
        ...

    def prefill(self, embeds: Tensor) -> tuple[Tensor, Any]:
        """(B, T, D) input embeddings -> ((B, T, D) final hidden states, cache of the T positions)."""
        ...

    def extend(self, embeds: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """(B, N, D) embeddings of the next N positions -> ((B, N, D) their final hidden states, the
        cache grown by them). The cache passed in may be reused: use only the one returned."""
        ...


def incremental_decoding(backbone: Backbone) -> IncrementalDecoding | None:
    """`backbone` as an IncrementalDecoding backbone when it declares the capability and its model
    supports it, else None (the caller runs the whole sequence with `hidden` instead)."""
    if isinstance(backbone, IncrementalDecoding) and backbone.decodes_incrementally():
        return backbone
    return None
