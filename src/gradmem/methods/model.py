"""MemoryModel: a backbone plus a memory method, with the three public calls write / read / generate.

READ is the same for every method: the model runs on [memory prefix; query; target] and is scored
on the target tokens. Everything is right-padded, so no attention mask is needed. A method whose
memory acts inside the decoder layers (ARMT) offers `reading(backbone, memory)`, a context manager
that READ and generate enter around their backbone calls; for the others it is a no-op.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import Batch, TokenBatch
from gradmem.core.memory import Memory
from gradmem.core.method import MemoryMethod
from gradmem.core.sequence import concat_right, gather_positions, per_example_cross_entropy
from gradmem.core.write import WriteOptions

READ_LOSSES = ("example", "token")


@dataclass
class ReadOutput:
    """What READ returns."""

    logits: Tensor  # (B, Ty, V): logits[b, t] predicts target token t of example b
    loss: Tensor | None  # scalar: the model's `read_loss` reduction of the target cross-entropy
    per_example_loss: Tensor | None  # (B,)


@dataclass
class StepOutput:
    """A training forward: the loss to minimise and its parts."""

    loss: Tensor
    read: ReadOutput
    memory: Memory


class MemoryModel(nn.Module):
    """Backbone + memory method. `write` a context batch once, `read`/`generate` from it many times.

    `read_loss` reduces the target cross-entropy of a batch: "example" (default) averages each
    example's mean over its target tokens, so every example weighs the same whatever its answer's
    length; "token" takes one mean over all target tokens of the batch, as the authors' code does.
    """

    def __init__(self, backbone: Backbone, method: MemoryMethod, read_loss: str = "example") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError("the backbone must be an nn.Module implementing gradmem.backbones.Backbone")
        if read_loss not in READ_LOSSES:
            raise ValueError(f"unknown read_loss {read_loss!r}; valid: {list(READ_LOSSES)}")
        self.backbone = backbone
        self.method = method
        self.read_loss = read_loss

    @property
    def max_positions(self) -> int | None:
        return self.backbone.max_positions

    @property
    def max_sequence_tokens(self) -> int | None:
        """Tokens a context (or a query + target) may have after the memory prefix; None = no limit."""
        limit = self.max_positions
        return None if limit is None else limit - self.method.prefix_size()

    def write(self, context: TokenBatch, options: WriteOptions | None = None, **overrides: Any) -> Memory:
        """Write each context of the batch into a memory: the one entry point to a method's WRITE.

        `options` (gradmem.core.write.WriteOptions) or its fields as keywords override the method's
        config for this call, e.g. `model.write(context, steps=5)` (test-time K), `lr=...`,
        `measure_final=True`, `target_loss=...` (adaptive stop), `on_loss=fn` (live losses).
        """
        options = replace(options or WriteOptions(), **overrides)
        if context.ids.numel() == 0 or bool((context.lengths < 1).any()):
            raise ValueError("cannot write an empty context: every example needs at least one context token")
        room = self.max_sequence_tokens
        if room is not None and int(context.lengths.max()) > room:
            raise ValueError(
                f"context of {int(context.lengths.max())} tokens plus {self.method.prefix_size()} memory vectors "
                f"exceeds the backbone's {self.max_positions} positions"
            )
        return self.method.write(self.backbone, context, options)

    def reading(self, memory: Memory) -> AbstractContextManager:
        """The method's `reading` hook for this memory (e.g. per-layer hooks; a no-op for most)."""
        return self.method.reading(self.backbone, memory)

    def read(self, memory: Memory, query: TokenBatch, target: TokenBatch) -> ReadOutput:
        """Teacher-forced READ: logits for every target token, and the loss."""
        if len(memory) != len(query) or len(query) != len(target):
            raise ValueError(f"batch sizes differ: memory {len(memory)}, query {len(query)}, target {len(target)}")
        tokens, _ = concat_right(query.ids, query.lengths, target.ids, target.lengths)  # (B, Lq + Ly)
        embeds, _ = concat_right(
            memory.prefix, memory.lengths, self.backbone.embed(tokens), query.lengths + target.lengths
        )
        with self.reading(memory):
            hidden = self.backbone.hidden(embeds)  # (B, T, D)
        # target token t is predicted at position prefix_len + query_len - 1 + t
        start = memory.prefix_lengths() + query.lengths - 1
        positions = start[:, None] + torch.arange(target.ids.shape[1], device=start.device)
        logits = self.backbone.logits(gather_positions(hidden, positions))  # (B, Ty, V)
        per_example = per_example_cross_entropy(logits, target.ids, target.mask)
        if self.read_loss == "example":
            loss = per_example.mean()
        else:  # each example's mean weighted by its number of target tokens
            lengths = target.lengths.to(per_example.dtype)
            loss = (per_example * lengths).sum() / lengths.sum()
        return ReadOutput(logits, loss, per_example)

    @torch.no_grad()
    def generate(self, memory: Memory, query: TokenBatch, max_new_tokens: int, eos_id: int | None = None) -> Tensor:
        """Greedy decoding from [memory; query]. Returns (B, max_new_tokens), -1 after an example stops."""
        batch = len(query)
        buffer = torch.full((batch, query.ids.shape[1] + max_new_tokens), 0, dtype=torch.long, device=query.ids.device)
        buffer[:, : query.ids.shape[1]] = query.ids
        lengths = query.lengths.clone()
        out = torch.full((batch, max_new_tokens), -1, dtype=torch.long, device=query.ids.device)
        active = torch.ones(batch, dtype=torch.bool, device=query.ids.device)
        prefix_len = memory.prefix_lengths()
        rows = torch.arange(batch, device=query.ids.device)
        for t in range(max_new_tokens):
            width = int(lengths.max())
            embeds, _ = concat_right(memory.prefix, memory.lengths, self.backbone.embed(buffer[:, :width]), lengths)
            with self.reading(memory):
                hidden = self.backbone.hidden(embeds)
            last = gather_positions(hidden, (prefix_len + lengths - 1)[:, None])[:, 0]  # (B, D)
            token = self.backbone.logits(last).argmax(-1)  # (B,)
            out[active, t] = token[active]
            buffer[rows[active], lengths[active]] = token[active]
            lengths = lengths + active.long()
            if eos_id is not None:
                active = active & (token != eos_id)
            if not bool(active.any()):
                break
        return out

    def forward(self, batch: Batch) -> StepOutput:
        """Training step: write the contexts, read the targets; loss = READ loss (+ method's aux loss)."""
        memory = self.write(batch.context)
        read = self.read(memory, batch.query, batch.target)
        loss = read.loss if memory.aux_loss is None else read.loss + memory.aux_loss
        return StepOutput(loss, read, memory)
