"""RMT: the forward-only memory writer, the paper's main baseline at the same memory size.

One forward pass over [M; C; M]: the leading copy is read by the context tokens, the trailing copy
sits right after each example's last real context token and sees the whole context, and the
backbone's output states at the trailing positions become the new memory. "xK" re-reading repeats
the pass K times over the same context, feeding the new memory back in. READ is shared with every
method (gradmem.methods.model). Nothing is written by gradient descent, so RMT has no inner optimiser,
no reconstruction loss and no WRITE head; training is plain backpropagation through the K passes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import MEMORY_INITS, Memory, init_memory0, initial_memory
from gradmem.core.sequence import append_after, gather_positions
from gradmem.core.write import WriteOptions

RMT_PROJECTIONS = ("none", "linear")


@dataclass
class RMTConfig:
    """Shape of the memory and how many times the context is read."""

    num_memory: int = 8  # m, memory vectors (the same budget as GradMem's m)
    projection: str = (
        "linear"  # "none" | "linear" (shared d x d, init identity) applied before the memory enters the model
    )
    init_std: float = 0.02  # std of the normal initialisation of M0
    init: str = "normal"  # M0: "normal" (init_std) | "mean_embedding" (the backbone's mean input embedding + noise)
    steps: int = 1  # K, forward passes over the context ("RMT xK"); may be overridden at evaluation time

    def __post_init__(self) -> None:
        if self.num_memory < 1:
            raise ValueError(f"num_memory must be >= 1, got {self.num_memory}")
        if self.projection not in RMT_PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}; valid: {list(RMT_PROJECTIONS)}")
        if self.init not in MEMORY_INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {list(MEMORY_INITS)}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


class RMT(nn.Module):
    """Recurrent Memory Transformer writer (see module docstring)."""

    name = "rmt"

    def __init__(self, backbone: Backbone, cfg: RMTConfig) -> None:
        super().__init__()
        self.config = cfg
        d = backbone.hidden_size
        self.memory0 = initial_memory(cfg.num_memory, d, cfg.init_std)  # (m, D)
        self.projection = nn.Parameter(torch.eye(d)) if cfg.projection == "linear" else None  # (D, D)

    def init_from_backbone(self, backbone: Backbone) -> None:
        """M0 from the finished backbone when the config asks for it (gradmem.core.memory.init_memory0)."""
        init_memory0(self.memory0, backbone, self.config.init)

    def prefix_size(self) -> int:
        """Vectors READ sees (the model's position check counts both memory copies, see `write`)."""
        return self.config.num_memory

    def reading(self, backbone: Backbone, memory: Memory) -> AbstractContextManager:
        return nullcontext()  # the memory is a prefix: nothing to do inside the layers

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats stored per example: m x d."""
        return self.memory0.numel()

    def prefix(self, memory: Tensor) -> Tensor:
        """(B, m, D) memory -> (B, m, D) embeddings that enter the model."""
        return memory if self.projection is None else memory @ self.projection.T

    def read_pass(self, backbone: Backbone, memory: Tensor, context: TokenBatch, context_embeds: Tensor) -> Tensor:
        """One pass over [M; C; M] -> (B, m, D) output states at the trailing memory positions."""
        m = memory.shape[1]
        embedded = self.prefix(memory)  # (B, m, D)
        tail, trailing = append_after(context_embeds, context.lengths, embedded)  # (B, N + m, D), (B, m)
        hidden = backbone.hidden(torch.cat((embedded, tail), dim=1))  # (B, m + N + m, D)
        return gather_positions(hidden, m + trailing)  # the leading copy shifts every position by m

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Read each context K times (`options.steps`, default the config's) into its own memory;
        the inner-lr and adaptive options of gradient writers do not apply."""
        total = self.config.steps if options.steps is None else options.steps
        limit = backbone.max_positions
        if limit is not None and int(context.lengths.max()) + 2 * self.config.num_memory > limit:
            raise ValueError(
                f"context plus 2 x {self.config.num_memory} memory vectors exceeds the backbone's {limit} positions"
            )
        context_embeds = backbone.embed(context.ids)  # (B, N, D), shared by all passes
        memory = self.memory0.expand(len(context), -1, -1)  # (B, m, D)
        for _ in range(total):
            memory = self.read_pass(backbone, memory, context, context_embeds)
        return Memory(self.prefix(memory))

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)
