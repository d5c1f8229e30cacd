"""The Memory value: what WRITE produces and READ consumes.

A memory is a block of prefix input embeddings, one row per example. READ conditions on it in
place of the context, so one memory serves any number of queries, can be saved and inspected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class WriteStats:
    """Per-step record of a WRITE (detached, for logging and inspection)."""

    losses: Tensor  # (K, B) reconstruction loss of each example before each step
    grad_norms: Tensor  # (K, B) norm of each example's inner gradient at each step
    final_loss: Tensor | None = None  # (B,) reconstruction loss after the last step, when measured
    mean_loss: Tensor | None = field(default=None, repr=False)  # in-graph mean loss over steps (training)
    steps_taken: Tensor | None = None  # (B,) steps applied to each example (fewer with a target loss)

    @property
    def steps(self) -> int:
        return self.losses.shape[0]


@dataclass
class Memory:
    """Prefix embeddings for READ, with per-example lengths when they differ (full context)."""

    prefix: Tensor  # (B, P, D)
    lengths: Tensor | None = None  # (B,) real prefix length of each row; None when all are P
    stats: WriteStats | None = None
    aux_loss: Tensor | None = field(default=None, repr=False)  # scalar added to the training loss

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

    def detach(self) -> "Memory":
        """A copy cut from the autograd graph (what a memory service stores)."""
        return Memory(self.prefix.detach(), self.lengths, self.stats, None)

    def select(self, index: int | slice | Tensor) -> "Memory":
        """Rows of this memory (e.g. one example's memory out of a batch write)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        lengths = None if self.lengths is None else self.lengths[index]
        return Memory(self.prefix[index], lengths, None, None)

    def repeat(self, times: int) -> "Memory":
        """A one-row memory repeated `times` times, to answer a batch of queries about one context."""
        if len(self) != 1:
            raise ValueError(f"repeat needs a single-row memory, this one has {len(self)} rows")
        lengths = None if self.lengths is None else self.lengths.expand(times)
        return Memory(self.prefix.expand(times, -1, -1), lengths, None, None)
