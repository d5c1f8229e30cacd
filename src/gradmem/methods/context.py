"""Reference points: the full context as memory (upper bound) and no memory at all (lower bound)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from gradmem.backbones.base import context_state_floats
from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import Memory
from gradmem.core.write import WriteOptions


@dataclass
class NoConfig:
    """These methods have nothing to configure."""


class FullContext(nn.Module):
    """READ sees the whole context: the 'memory' is the context's own embeddings (its KV cache)."""

    name = "full_context"

    def __init__(self, backbone: Backbone, cfg: NoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or NoConfig()

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        return Memory(backbone.embed(context.ids), context.lengths)

    def init_from_backbone(self, backbone: Backbone) -> None:
        pass  # nothing learned to initialise

    def prefix_size(self) -> int:
        return 0  # the prefix is the context itself, counted with it

    def reading(self, backbone: Backbone, memory: Memory) -> AbstractContextManager:
        return nullcontext()

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """The backbone's state for the whole context: its KV cache (or a recurrent state)."""
        return context_state_floats(backbone, context_tokens)

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)


class NoContext(nn.Module):
    """READ sees only the query: how far the model gets without the context."""

    name = "no_context"

    def __init__(self, backbone: Backbone, cfg: NoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or NoConfig()

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        embeds = backbone.embed(context.ids[:, :0])  # (B, 0, D)
        return Memory(embeds)

    def init_from_backbone(self, backbone: Backbone) -> None:
        pass  # nothing learned to initialise

    def prefix_size(self) -> int:
        return 0

    def reading(self, backbone: Backbone, memory: Memory) -> AbstractContextManager:
        return nullcontext()

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        return 0

    def export_config(self) -> dict[str, Any]:
        return {}
