"""The Memory value: what WRITE produces and READ consumes.

A memory is a block of prefix input embeddings, one row per example. READ conditions on it in
place of the context, so one memory serves any number of queries, can be saved and inspected.
A method that keeps its state inside the layers instead (ARMT: an association matrix per decoder
layer) stores it in `layer_states`, with an empty prefix, and applies it through its `reading` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gradmem.core.backbone import Backbone


@dataclass
class WriteStats:
    """Per-step record of a WRITE (detached, for logging and inspection)."""

    losses: Tensor  # (K, B) reconstruction loss of each example before each step
    grad_norms: Tensor  # (K, B) norm of each example's inner gradient at each step
    final_loss: Tensor | None = None  # (B,) reconstruction loss after the last step, when measured
    graph_losses: Tensor | None = field(default=None, repr=False)  # (K,) in-graph mean loss of each step, when kept
    steps_taken: Tensor | None = None  # (B,) steps applied to each example (fewer with a target loss)

    @property
    def steps(self) -> int:
        return self.losses.shape[0]


LayerStates = tuple[tuple[Tensor, ...], ...]  # per decoder layer, tensors with a leading batch dim (B, ...)


def _map_states(states: LayerStates | None, fn: Callable[[Tensor], Tensor]) -> LayerStates | None:
    return None if states is None else tuple(tuple(fn(t) for t in layer) for layer in states)


@dataclass
class Memory:
    """Prefix embeddings for READ, with per-example lengths when they differ (full context), and
    optional per-layer state for methods that act inside the decoder layers (ARMT)."""

    prefix: Tensor  # (B, P, D); (B, 0, D) when all the memory is in layer_states
    lengths: Tensor | None = None  # (B,) real prefix length of each row; None when all are P
    stats: WriteStats | None = None
    aux_loss: Tensor | None = field(default=None, repr=False)  # scalar added to the training loss
    layer_states: LayerStates | None = field(default=None, repr=False)  # per layer, e.g. ARMT's (A (B, F, D), z (B, F))

    def __len__(self) -> int:
        return self.prefix.shape[0]

    @property
    def num_vectors(self) -> int:
        """Prefix length P (the largest row when lengths differ)."""
        return self.prefix.shape[1]

    def prefix_lengths(self) -> Tensor:
        """(B,) prefix length of every row."""
        if self.lengths is not None:
            return self.lengths
        return torch.full((len(self),), self.num_vectors, dtype=torch.long, device=self.prefix.device)

    def detach(self) -> Memory:
        """A copy cut from the autograd graph (what a memory service stores)."""
        return Memory(
            self.prefix.detach(), self.lengths, self.stats, None, _map_states(self.layer_states, Tensor.detach)
        )

    def select(self, index: int | slice | Tensor) -> Memory:
        """Rows of this memory (e.g. one example's memory out of a batch write)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        lengths = None if self.lengths is None else self.lengths[index]
        return Memory(self.prefix[index], lengths, None, None, _map_states(self.layer_states, lambda t: t[index]))

    def repeat(self, times: int) -> Memory:
        """A one-row memory repeated `times` times, to answer a batch of queries about one context."""
        if len(self) != 1:
            raise ValueError(f"repeat needs a single-row memory, this one has {len(self)} rows")
        lengths = None if self.lengths is None else self.lengths.expand(times)
        states = _map_states(self.layer_states, lambda t: t.expand(times, *t.shape[1:]))
        return Memory(self.prefix.expand(times, -1, -1), lengths, None, None, states)


MEMORY_INITS = ("normal", "mean_embedding")


def initial_memory(num_memory: int, width: int, init_std: float) -> nn.Parameter:
    """M0: the learned (m, D) memory every write starts from, normal(0, init_std)."""
    return nn.Parameter(torch.randn(num_memory, width) * init_std)


def mean_embedding(backbone: Backbone) -> Tensor:
    """(D,) mean input embedding over the vocabulary (with any model-specific scaling applied)."""
    with torch.no_grad():
        ids = torch.arange(backbone.vocab_size, device=backbone.head_weight().device)
        return backbone.embed(ids[None])[0].mean(0)


def init_memory0(memory0: nn.Parameter, backbone: Backbone, init: str) -> None:
    """Re-initialise M0 from the finished backbone when `init` asks for it ("normal" keeps the draw).

    "mean_embedding": every row is the mean input embedding plus normal(0, 0.01) noise, a vector of
    the kind a pretrained model has seen as input (a normal(0, 0.02) M0 is far from its embeddings).
    The noise is drawn here, after the whole model is built, so a spec with this option draws the
    same random numbers in the same order as the scripts that set M0 by hand after build_model.
    """
    if init not in MEMORY_INITS:
        raise ValueError(f"unknown memory init {init!r}; valid: {list(MEMORY_INITS)}")
    if init == "mean_embedding":
        with torch.no_grad():
            memory0.copy_(mean_embedding(backbone).expand_as(memory0) + 0.01 * torch.randn_like(memory0))
