"""The contract every memory method keeps, so generic code never asks a method what it has.

A method is an `nn.Module` that WRITEs a batch of contexts into a `Memory`; READ is shared by all
methods (gradmem.model). Every part below is required; a method without a use for one implements
the plain default (no prefix, no reading hook). `build_method` checks new registrations against it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from gradmem.backbones.base import Backbone
from gradmem.data import TokenBatch
from gradmem.memory import Memory
from gradmem.write import WriteOptions


@runtime_checkable
class MemoryMethod(Protocol):
    """What MemoryModel, the trainer, the engine and the benchmarks use of a method."""

    name: str  # the registry name
    config: Any  # the method's config dataclass

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Write each context of the batch into its own memory. Options that do not apply to a
        method (an inner lr for a forward writer) are ignored by it."""
        ...

    def init_from_backbone(self, backbone: Backbone) -> None:
        """Initialisation that needs the finished backbone (e.g. M0 = its mean embedding); build_model
        calls it last, so the random draws of everything built before keep their order."""
        ...

    def prefix_size(self) -> int:
        """Vectors READ sees before the query (0 for a method without a prefix)."""
        ...

    def reading(self, backbone: Backbone, memory: Memory) -> AbstractContextManager:
        """Entered around every READ / generate backbone call (per-layer hooks); a no-op for most."""
        ...

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats the method keeps per example for a context of `context_tokens` tokens."""
        ...

    def export_config(self) -> dict[str, Any]:
        """The config as plain JSON data."""
        ...


__all__ = ["MemoryMethod", "WriteOptions"]
