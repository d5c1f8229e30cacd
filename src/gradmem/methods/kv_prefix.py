"""Per-layer KV memory: the paper's appendix-J ablation of *where* GradMem's memory lives.

GradMem writes m input embeddings; this method writes, for every decoder layer, the keys and
values of P memory positions (a test-time-trainable KV-cache prefix), by the same WRITE: K steps
of gradient descent (gradmem.core.write.write, the same inner optimiser and grad modes) on the same
loss, the cross-entropy of reconstructing the context from [memory; C] with a WRITE head.
    size-matched:   P = 1, 1 x layers x D x 2 floats (the paper, 4 x 128: 1,024 = GradMem m = 8)
    length-matched: P = m, m x layers x D x 2 floats (8 x 4 x 128 x 2 = 8,192, 8x GradMem's)

Mechanics: the sequence starts with P slot positions. At every decoder layer a forward hook on the
key/value projection replaces the keys and values it computed for the slots by the memory's, so
every later token attends to the memory, and the slots' own hidden states never reach them. The
slots' input embedding is one learned vector shared by all examples; it matters only at the last
slot, which predicts the first context token in the WRITE loss (as GradMem's last memory vector
does). The stored keys are those before the rotary rotation: the backbone rotates them by the slot
positions 0..P-1 like any key (an invertible map of what is stored). READ runs [slots; Q; Y] with
the same hooks. State per example: layers x P x 2 x (key/value width) floats.

Backbones: the built-in llama (its fused QKV projection) and Hugging Face Llama-family layers
(`self_attn.k_proj` / `v_proj`, grouped-query widths included); others are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from gradmem.backbones.llama import Block
from gradmem.core.backbone import Backbone
from gradmem.core.batch import TokenBatch
from gradmem.core.memory import Memory
from gradmem.core.sequence import per_example_cross_entropy
from gradmem.core.write import WriteConfig, WriteOptions, write

# (projection module, first column, end column of its output that the memory replaces,
#  first and end column of the memory's (.., 2 x kv width) row that replaces them)
Splice = tuple[nn.Module, int, int, int, int]


@dataclass
class KVPrefixConfig:
    """Shape of the per-layer KV memory and how it is written."""

    num_memory: int = 1  # P, memory positions per layer (1 = size-matched, m = length-matched)
    write_head: bool = True  # separate reconstruction head initialised from the LM head
    init_std: float = 0.02  # std of the normal initialisation of the initial keys/values and the slot
    write: WriteConfig = field(default_factory=WriteConfig)  # steps, inner optimiser, grad mode

    def __post_init__(self) -> None:
        if isinstance(self.write, dict):  # built from JSON
            self.write = WriteConfig(**self.write)
        if self.num_memory < 1 or self.init_std <= 0:
            raise ValueError(f"num_memory must be >= 1 and init_std > 0, got {self.num_memory}, {self.init_std}")


def layer_splices(layer: nn.Module) -> list[Splice]:
    """Where a decoder layer computes its keys and values, or a TypeError."""
    if isinstance(layer, Block):  # fused (q, k, v) projection: keys and values are columns D..3D
        d = layer.qkv.out_features // 3
        return [(layer.qkv, d, 3 * d, 0, 2 * d)]
    attention = getattr(layer, "self_attn", None)
    if attention is not None and isinstance(getattr(attention, "k_proj", None), nn.Linear):
        kv = attention.k_proj.out_features
        return [(attention.k_proj, 0, kv, 0, kv), (attention.v_proj, 0, kv, kv, 2 * kv)]
    raise TypeError(
        f"kv_prefix cannot find the key/value projections of {type(layer).__name__}: it supports the "
        "built-in llama and Hugging Face Llama-family layers (self_attn.k_proj / v_proj)"
    )


def _splice(lo: int, hi: int, memory: Tensor, module: nn.Module, args: tuple, out: Tensor) -> Tensor:
    """Forward hook: columns lo:hi of the first P rows of the projection's output become `memory` (B, P, hi - lo)."""
    p = memory.shape[1]
    head = torch.cat((out[:, :p, :lo], memory.to(out.dtype), out[:, :p, hi:]), dim=-1)
    return torch.cat((head, out[:, p:]), dim=1)


class KVPrefix(nn.Module):
    """Per-layer KV memory written by gradient descent (see module docstring)."""

    name = "kv_prefix"

    def __init__(self, backbone: Backbone, cfg: KVPrefixConfig) -> None:
        super().__init__()
        self.config = cfg
        d = backbone.hidden_size
        splices = [layer_splices(layer) for layer in backbone.decoder_layers()]
        width = max(s[4] for s in splices[0])  # 2 x the key/value width
        self.memory0 = nn.Parameter(torch.randn(len(splices), cfg.num_memory, width) * cfg.init_std)  # (L, P, 2Dkv)
        self.slot = nn.Parameter(torch.randn(d) * cfg.init_std)  # (D,) input at every memory position
        self.write_head: nn.Linear | None = None
        if cfg.write_head:
            self.write_head = nn.Linear(d, backbone.vocab_size, bias=False)
            with torch.no_grad():
                self.write_head.weight.copy_(backbone.head_weight())

    def init_from_backbone(self, backbone: Backbone) -> None:
        pass  # the initial keys/values keep their normal draw

    def prefix_size(self) -> int:
        return self.config.num_memory

    def state_floats(self, backbone: Backbone, context_tokens: int) -> int:
        """Floats stored per example: layers x P x 2 x key/value width (the slot is shared)."""
        return self.memory0.numel()

    def slots(self, batch: int) -> Tensor:
        """(B, P, D) input embeddings of the memory positions."""
        return self.slot.expand(batch, self.config.num_memory, -1)

    @contextmanager
    def _spliced(self, backbone: Backbone, memory: Tensor) -> Iterator[None]:
        """While inside, layer l's keys/values at the first P positions are memory[:, l] ((B, L, P, 2Dkv))."""
        layers = backbone.decoder_layers()
        if len(layers) != memory.shape[1]:
            raise ValueError(f"this KV memory has {memory.shape[1]} layers, the backbone has {len(layers)}")
        handles = [
            module.register_forward_hook(partial(_splice, lo, hi, memory[:, i, :, start:end]))
            for i, layer in enumerate(layers)
            for module, lo, hi, start, end in layer_splices(layer)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def reconstruction_loss(
        self, backbone: Backbone, memory: Tensor, context: TokenBatch, context_embeds: Tensor
    ) -> Tensor:
        """(B,) mean next-token cross-entropy of each example's real context tokens given [memory; C]."""
        p = self.config.num_memory
        with self._spliced(backbone, memory):
            hidden = backbone.hidden(torch.cat((self.slots(len(context)), context_embeds[:, :-1]), 1))[:, p - 1 :]
        logits = self.write_head(hidden) if self.write_head is not None else backbone.logits(hidden)
        return per_example_cross_entropy(logits, context.ids, context.mask)

    def write(self, backbone: Backbone, context: TokenBatch, options: WriteOptions = WriteOptions()) -> Memory:
        """Write each context into its own per-layer keys and values by K gradient steps."""
        cfg = self.config.write
        total = cfg.steps if options.steps is None else options.steps
        if (
            torch.is_grad_enabled()
            and cfg.grad_mode == "second"
            and total > 0
            and not backbone.supports_double_backward()
        ):
            raise RuntimeError(
                "grad_mode='second' needs attention with a double backward; use attention='math' (built-in) or "
                "attn_implementation='eager' (Hugging Face), or choose grad_mode='first' explicitly."
            )
        context_embeds = backbone.embed(context.ids)  # (B, N, D)

        def loss_fn(params: tuple[Tensor, ...]) -> Tensor:
            return self.reconstruction_loss(backbone, params[0], context, context_embeds)

        (memory,), stats = write(loss_fn, (self.memory0.expand(len(context), -1, -1, -1),), cfg, options)
        states = tuple((memory[:, i],) for i in range(memory.shape[1]))  # per layer (B, P, 2Dkv)
        return Memory(self.slots(len(context)), None, stats, layer_states=states)

    @contextmanager
    def reading(self, backbone: Backbone, memory: Memory) -> Iterator[None]:
        """While inside, every layer's first P keys/values are this memory's."""
        states = memory.layer_states
        if states is None or any(len(layer) != 1 for layer in states) or memory.num_vectors != self.config.num_memory:
            raise ValueError("this memory holds no per-layer KV prefix of this size; write it with kv_prefix")
        with self._spliced(backbone, torch.stack([layer[0] for layer in states], 1)):
            yield

    def export_config(self) -> dict[str, Any]:
        return asdict(self.config)
