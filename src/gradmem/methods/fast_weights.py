"""What the test-time-training memories (TTT-Linear, LaCT) share: per-layer fast weights, written
from the context by one pass of the backbone and read by the query through layer hooks.

A method of this kind holds one *cell* per decoder layer. A cell knows its learned parts (the
projections, the initial fast weights W0, the norms) and two operations on a layer's (B, T, D)
input x, its residual stream:
    write(x, mask, steps, lr) -> state     fast weights after `steps` inner gradient steps on the
                                           real (mask) tokens of x, one chunk = the whole context
    read(state, x) -> (B, T, D)            what the fast weights return for x, added to x
WRITE runs the backbone once over the context. At every layer a forward pre-hook hands the layer's
input to its cell, keeps the written state, and adds the cell's read *with W0* to the input: the
context is processed apply-then-update, as in LaCT's block-causal order and TTT's mini-batches
(a token never reads an update made from itself or from later tokens). The per-layer states are
the memory (`Memory.layer_states`, an empty prefix). READ and generate run [Q; Y] with hooks that
add each cell's read of its written state: the context is gone, only the fast weights remain, and
the query does not update them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from functools import partial
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import Memory
from gradmem.core.write import WriteOptions

State = tuple[Tensor, ...]


class FastWeightCell(Protocol):
    """One decoder layer's fast-weight memory (see module docstring)."""

    def initial_state(self, batch: int) -> State: ...

    def write(self, x: Tensor, mask: Tensor, steps: int, lr: float | None) -> State: ...

    def read(self, state: State, x: Tensor) -> Tensor: ...

    def state_floats(self) -> int: ...


def _map_input(fn: Callable[[Tensor], Tensor], module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: a layer's input x (positional or `hidden_states`) becomes fn(x)."""
    if args:
        return (fn(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}


@contextmanager
def mapped_layer_inputs(layers: Sequence[nn.Module], fns: Sequence[Callable[[Tensor], Tensor]]) -> Iterator[None]:
    """While inside, decoder layer i's input x becomes fns[i](x); the hooks are removed on exit."""
    handles = [
        layer.register_forward_pre_hook(partial(_map_input, fn), with_kwargs=True) for layer, fn in zip(layers, fns)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def checked_layers(backbone: Backbone, cells: nn.ModuleList, method: str) -> nn.ModuleList:
    """The backbone's decoder layers, refused if their number is not the cells'."""
    layers = backbone.decoder_layers()
    if len(layers) != len(cells):
        raise ValueError(f"this {method} was built for {len(cells)} decoder layers, the backbone has {len(layers)}")
    return layers


def write_fast_weights(
    backbone: Backbone, cells: nn.ModuleList, context: TokenBatch, steps: int, lr: float | None, method: str
) -> Memory:
    """One pass over the context; every layer's cell writes its fast weights (module docstring)."""
    layers = checked_layers(backbone, cells, method)
    embeds = backbone.embed(context.ids)  # (B, N, D)
    batch = len(context)
    states: list[State] = []

    def write_then_apply(cell: Any, x: Tensor) -> Tensor:
        states.append(cell.write(x, context.mask, steps, lr))
        return x + cell.read(cell.initial_state(batch), x)

    with mapped_layer_inputs(layers, [partial(write_then_apply, cell) for cell in cells]):
        backbone.hidden(embeds)
    return Memory(embeds.new_zeros(batch, 0, embeds.shape[-1]), layer_states=tuple(states))


@contextmanager
def reading_fast_weights(backbone: Backbone, cells: nn.ModuleList, memory: Memory, method: str) -> Iterator[None]:
    """While inside, every decoder layer adds what its written fast weights return to its input."""
    states = memory.layer_states
    shapes = [tuple(t.shape[1:]) for t in cells[0].initial_state(1)] if len(cells) else []
    if (
        states is None
        or len(states) != len(cells)
        or any([tuple(t.shape[1:]) for t in layer] != shapes for layer in states)
    ):
        raise ValueError(f"this memory holds no {method} fast weights of this shape; write it with the {method} method")
    layers = checked_layers(backbone, cells, method)
    fns = [lambda x, cell=cell, state=state: x + cell.read(state, x) for cell, state in zip(cells, states)]
    with mapped_layer_inputs(layers, fns):
        yield


def no_autocast(x: Tensor) -> Any:
    """A context with autocast off on x's device: a cell computes in its own dtype (float32 under
    bf16 autocast, as LaCT keeps its fast weights), since the inner update adds small steps to O(1)
    weights."""
    return torch.autocast(x.device.type, enabled=False)


class FastWeightMemory(nn.Module):
    """A memory method whose memory is one fast-weight cell per decoder layer (TTT-Linear, LaCT):
    subclasses name themselves and their cell class; the config needs `steps`."""

    name = "fast_weights"
    cell_class: Callable[[int, Any], nn.Module]

    def __init__(self, backbone: Backbone, cfg: Any) -> None:
        super().__init__()
        self.config = cfg
        self.cells = nn.ModuleList(type(self).cell_class(backbone.hidden_size, cfg) for _ in backbone.decoder_layers())

    def init_from_backbone(self, backbone: Backbone) -> None:
        pass  # the initial fast weights and the maps keep their draw

    def prefix_size(self) -> int:
        return 0  # the memory lives in the layers' fast weights, not in a prefix

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats stored per example (the cells' fast weights), whatever the context's length."""
        return sum(cell.state_floats() for cell in self.cells)

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Write each context into its own fast weights; `options` overrides K and the base lr."""
        steps = self.config.steps if options.steps is None else options.steps
        return write_fast_weights(backbone, self.cells, context, steps, options.lr, self.name)

    @contextmanager
    def reading(self, backbone: Backbone, memory: Memory) -> Iterator[None]:
        with reading_fast_weights(backbone, self.cells, memory, self.name):
            yield

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)
