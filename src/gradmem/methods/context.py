"""Reference points: the full context as memory (upper bound) and no memory at all (lower bound)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from gradmem.backbones.base import Backbone
from gradmem.data import TokenBatch
from gradmem.memory import Memory


@dataclass
class NoConfig:
    """These methods have nothing to configure."""


class FullContext(nn.Module):
    """READ sees the whole context: the 'memory' is the context's own embeddings (its KV cache)."""

    name = "full_context"

    def __init__(self, backbone: Backbone, cfg: NoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or NoConfig()
        self._width = backbone.hidden_size

    def write(self, backbone: Backbone, context: TokenBatch, steps: int | None = None, lr: float | None = None,
              measure_final: bool = False) -> Memory:
        return Memory(backbone.embed(context.ids), context.lengths)

    def state_floats(self, context_tokens: int = 0, num_layers: int = 0) -> int:
        """A KV cache: 2 * layers * tokens * d floats."""
        return 2 * num_layers * context_tokens * self._width

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)


class NoContext(nn.Module):
    """READ sees only the query: how far the model gets without the context."""

    name = "no_context"

    def __init__(self, backbone: Backbone, cfg: NoConfig | None = None) -> None:
        super().__init__()
        self.config = cfg or NoConfig()

    def write(self, backbone: Backbone, context: TokenBatch, steps: int | None = None, lr: float | None = None,
              measure_final: bool = False) -> Memory:
        embeds = backbone.embed(context.ids[:, :0])  # (B, 0, D)
        return Memory(embeds)

    def state_floats(self) -> int:
        return 0

    def export_config(self) -> dict[str, Any]:
        return {}
