"""The contract every memory method keeps, so generic code never asks a method what it has.

A method is an `nn.Module` that WRITEs a batch of contexts into a `Memory`; READ is shared by all
methods (gradmem.methods.model). Every part below is required; a method without a use for one implements
the plain default (no prefix, no reading hook). `build_method` checks new registrations against it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import Memory
from gradmem.core.write import WriteOptions


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


@runtime_checkable
class Reconstructing(MemoryMethod, Protocol):
    """A method whose memory can be read back as the context it was written from (GradMem writes by
    reconstructing its context): what the serving engine's reconstruction report needs. Checked
    once, where a caller needs it (`reconstructing`)."""

    def write_logits(self, backbone: Backbone, hidden: Tensor) -> Tensor:
        """(..., D) hidden states -> (..., V) logits of the head the WRITE loss is computed with."""
        ...

    def reconstruction_logits(self, backbone: Backbone, prefix: Tensor, context_embeds: Tensor) -> Tensor:
        """(B, N, V) logits of the context given [prefix; context]: position t predicts token t."""
        ...


def reconstructing(method: MemoryMethod) -> Reconstructing:
    """`method` as a Reconstructing method; ValueError naming it when it is not one."""
    if not isinstance(method, Reconstructing):
        raise ValueError(
            f"method {method.name!r} does not write by reconstructing its context; "
            "only a method that does (gradmem) can be served"
        )
    return method


class MethodModel(Protocol):
    """A backbone with a memory method (gradmem.methods.model.MemoryModel is one): what a memory
    file records and is checked against."""

    backbone: Backbone
    method: MemoryMethod

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...
