"""ARMT: the Associative Recurrent Memory Transformer (Rodkin et al. 2024, arXiv 2407.04841), the
paper's baseline with a per-layer associative memory written by a delta rule.

State, per example and decoder layer l: an association matrix A_l (F x D) and a normaliser z_l (F),
both zero before WRITE; F = 2 * nu * d_key is the width of the DPFP feature map phi.

WRITE runs the backbone once over [C; M]: M, m learned memory tokens, sits right after each
example's last real context token (like RMT's trailing copy). The outputs h_1..h_m of layer l at
the memory positions (outputs, as in the authors' code: the first layer's inputs there are M0
itself, the same for every context) update that layer's memory. All m tokens write against the
same old state, in one batched update as in the authors' code: the tokens are an unordered set of
write heads, and one matrix product is cheaper than m sequential updates.
    k_i = phi(W_K h_i),  v_i = W_V h_i,  beta_i = sigmoid(W_beta h_i)      (phi(.) has unit norm)
    v_bar_i = A^T k_i / (z . k_i + eps)               what A returns for k_i before this write
    A <- A + sum_i beta_i k_i (v_i - v_bar_i)^T       delta rule: move A's answer for k_i to v_i
    z <- z + sum_i gamma_i k_i,  gamma_i = clip(1 - z . k_i, 0, 1)    (correction; else gamma_i = 1)
The correction keeps z from growing when a key is written again, so a rewritten key reads back
its new value rather than an average.

READ has no prefix: for every token of [Q; Y] at every layer l, o = A_l^T q / (z_l . q + eps) with
q = phi(W_Q x) is added to the layer's input x, by forward pre-hooks that `reading` installs only
while READ or generate runs. W_K, W_V, W_Q, W_beta (one set per layer) and M0 belong to this
method, not to the backbone.

Scope: the original reads long inputs segment by segment, carrying A and z across segments (each
segment first reads the memory the earlier ones wrote, then writes its own). Here a context is
written as one segment, which is what the key-value capacity benchmark needs; multi-segment
recurrence is not supported. Within one segment the state is zero while the context is read, so
WRITE needs no read hooks. One head, the authors' default. W_V is initialised like the other maps
(theirs starts at zero), so every learned part has a gradient from the first step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import Memory, initial_memory
from gradmem.core.sequence import append_after, gather_positions
from gradmem.core.write import WriteOptions

EPS = 1e-5  # keeps a read finite where no key has been written (the authors' value)


@dataclass
class ARMTConfig:
    """Shape of the per-layer associative memories."""

    num_memory: int = 8  # m, memory tokens appended to the context in WRITE
    key_size: int = 16  # d_key, output width of W_K / W_Q before the feature map (F = 2 * nu * d_key)
    nu: int = 3  # DPFP order: products of [relu(x), relu(-x)] with its nu rolled copies
    correction: bool = True  # z grows only by the part of a key not yet stored (gamma); False: z += phi(k)
    init_std: float = 0.02  # std of the normal initialisation of M0 and of the per-layer maps

    def __post_init__(self) -> None:
        for name in ("num_memory", "key_size", "nu"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


def dpfp(x: Tensor, nu: int) -> Tensor:
    """Deterministic parameter-free projection (Schlag et al. 2021): (..., d) -> (..., 2 * nu * d), >= 0."""
    x = torch.cat((F.relu(x), F.relu(-x)), dim=-1)  # (..., 2d)
    return torch.cat([x * x.roll(j, dims=-1) for j in range(1, nu + 1)], dim=-1)


def retrieve(a: Tensor, z: Tensor, keys: Tensor) -> Tensor:
    """What the memory (A (B, F, D), z (B, F)) returns for (B, T, F) feature vectors: (B, T, D)."""
    return keys @ a / (keys @ z[..., None] + EPS)


def delta_update(
    a: Tensor, z: Tensor, keys: Tensor, values: Tensor, beta: Tensor, correction: bool = True
) -> tuple[Tensor, Tensor]:
    """Write T associations at once: keys (B, T, F) of unit norm, values (B, T, D), beta (B, T).

    Every v_bar is read from the old state; returns the new (A (B, F, D), z (B, F)).
    """
    residual = beta[..., None] * (values - retrieve(a, z, keys))  # (B, T, D)
    a = a + keys.transpose(1, 2) @ residual
    if correction:  # a gate on the normaliser, not a path for gradients (as in the authors' code)
        gamma = (1 - keys @ z[..., None]).clamp(0, 1).detach()  # (B, T, 1)
        keys = gamma * keys
    return a, z + keys.sum(1)


class LayerMemory(nn.Module):
    """The learned maps of one decoder layer's associative memory."""

    def __init__(self, width: int, cfg: ARMTConfig) -> None:
        super().__init__()
        self.nu = cfg.nu
        self.correction = cfg.correction
        self.key = nn.Linear(width, cfg.key_size, bias=False)  # W_K
        self.query = nn.Linear(width, cfg.key_size, bias=False)  # W_Q
        self.value = nn.Linear(width, width, bias=False)  # W_V
        self.beta = nn.Linear(width, 1)  # W_beta: one write strength per memory token
        for linear in (self.key, self.query, self.value, self.beta):
            nn.init.normal_(linear.weight, std=cfg.init_std)
        nn.init.zeros_(self.beta.bias)

    def features(self, projection: nn.Linear, x: Tensor) -> Tensor:
        """(B, T, D) -> (B, T, F) unit-norm DPFP features of a projection of x."""
        return F.normalize(dpfp(projection(x), self.nu), dim=-1)

    def write(self, state: tuple[Tensor, Tensor], hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Store what the (B, m, D) memory-token states `hidden` carry; returns the new (A, z)."""
        beta = torch.sigmoid(self.beta(hidden))[..., 0]  # (B, m)
        return delta_update(*state, self.features(self.key, hidden), self.value(hidden), beta, self.correction)

    def read(self, state: tuple[Tensor, Tensor], x: Tensor) -> Tensor:
        """(B, T, D) layer inputs -> (B, T, D) what the memory returns for them."""
        return retrieve(*state, self.features(self.query, x))


def _add_read(
    cell: LayerMemory, state: tuple[Tensor, Tensor], module: nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict]:
    """Forward pre-hook: a layer's input x becomes x + cell.read(state, x), positional or keyword."""
    if args:
        x = args[0]
        return (x + cell.read(state, x), *args[1:]), kwargs
    x = kwargs["hidden_states"]
    return args, {**kwargs, "hidden_states": x + cell.read(state, x)}


class ARMT(nn.Module):
    """Associative Recurrent Memory Transformer writer and reader (see module docstring)."""

    name = "armt"

    def __init__(self, backbone: Backbone, cfg: ARMTConfig) -> None:
        super().__init__()
        self.config = cfg
        d = backbone.hidden_size
        self.memory0 = initial_memory(cfg.num_memory, d, cfg.init_std)  # (m, D)
        self.layer_memories = nn.ModuleList(LayerMemory(d, cfg) for _ in backbone.decoder_layers())

    def feature_size(self) -> int:
        """F, the width of phi's output and of every key."""
        return 2 * self.config.nu * self.config.key_size

    def init_from_backbone(self, backbone: Backbone) -> None:
        pass  # M0 and the layer maps keep their normal draw

    def prefix_size(self) -> int:
        return 0  # the memory lives in the layers' associative matrices, not in a prefix

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats stored per example: layers x (A: F x D, z: F)."""
        f, d = self.feature_size(), self.memory0.shape[1]
        return len(self.layer_memories) * (f * d + f)

    def _layers_of(self, backbone: Backbone) -> nn.ModuleList:
        layers = backbone.decoder_layers()
        if len(layers) != len(self.layer_memories):
            raise ValueError(
                f"this ARMT was built for {len(self.layer_memories)} decoder layers, the backbone has {len(layers)}"
            )
        return layers

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Write each context into its own per-layer memories with one pass over [C; M]; the
        options of iterative writers do not apply."""
        layers = self._layers_of(backbone)
        m = self.config.num_memory
        limit = backbone.max_positions
        if limit is not None and int(context.lengths.max()) + m > limit:
            raise ValueError(f"context plus {m} memory tokens exceeds the backbone's {limit} positions")
        batch = len(context)
        tokens = self.memory0.expand(batch, -1, -1)  # (B, m, D)
        embeds, positions = append_after(backbone.embed(context.ids), context.lengths, tokens)  # (B, N + m, D), (B, m)
        outputs: dict[int, Tensor] = {}

        def capture(index: int, module: nn.Module, args: tuple, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output  # (B, N + m, D)
            outputs[index] = gather_positions(hidden, positions)  # (B, m, D)

        handles = [layer.register_forward_hook(partial(capture, i)) for i, layer in enumerate(layers)]
        try:
            backbone.hidden(embeds)
        finally:
            for handle in handles:
                handle.remove()
        f, d = self.feature_size(), embeds.shape[-1]
        states = []
        for i, cell in enumerate(self.layer_memories):
            empty = (embeds.new_zeros(batch, f, d), embeds.new_zeros(batch, f))  # A, z
            states.append(cell.write(empty, outputs[i]))
        return Memory(embeds.new_zeros(batch, 0, d), layer_states=tuple(states))

    @contextmanager
    def reading(self, backbone: Backbone, memory: Memory) -> Iterator[None]:
        """While inside, every decoder layer adds what its memory returns to its input."""
        states = memory.layer_states
        if states is None or len(states) != len(self.layer_memories):
            raise ValueError("this memory has no per-layer ARMT state; write it with the ARMT method")
        layers = self._layers_of(backbone)
        handles = [
            layer.register_forward_pre_hook(partial(_add_read, cell, state), with_kwargs=True)
            for layer, cell, state in zip(layers, self.layer_memories, states)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)
