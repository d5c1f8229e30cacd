"""Built-in Llama-style decoder: RMSNorm, rotary positions, gated MLP, causal attention.

Small and written for second-order meta-training speed: one fused QKV projection, one fused
gate/up projection, rotary tables computed once, and an attention kernel with double backward.
It also decodes incrementally (gradmem.core.backbone.IncrementalDecoding): its cache is, per layer,
the rotated keys and the values of every position run so far, each (B, heads, T, head_dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradmem.core.attention import DOUBLE_BACKWARD, get_attention, trailing_causal_attention
from gradmem.core.backbone import PlainBackboneDefaults

KVCache = list[tuple[Tensor, Tensor]]  # per layer: (B, H, T, Dh) rotated keys and values


@dataclass
class LlamaConfig:
    """Size of the built-in decoder."""

    vocab_size: int = 70  # tokens (70 = the key-value character vocabulary)
    hidden_size: int = 128  # model width d
    num_layers: int = 4  # decoder blocks
    num_heads: int = 4  # attention heads; must divide hidden_size
    intermediate_size: int = 512  # gated-MLP inner width
    max_positions: int = 4096  # longest sequence the rotary table covers
    rope_theta: float = 10000.0  # rotary base
    norm_eps: float = 1e-6  # RMSNorm epsilon
    tie_embeddings: bool = False  # share input embedding and LM head
    attention: str = "math"  # attention kernel name, see gradmem.core.attention

    def __post_init__(self) -> None:
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_positions"):
            if getattr(self, field) < 1:
                raise ValueError(f"LlamaConfig.{field} must be >= 1, got {getattr(self, field)}")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 2:
            raise ValueError("hidden_size / num_heads must be an even integer (rotary pairs)")
        get_attention(self.attention)


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotary_tables(head_dim: int, max_positions: int, theta: float) -> tuple[Tensor, Tensor]:
    """(T, Dh/2) cos and sin of the rotary angles."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of the head dim. x: (B, H, T, Dh); cos/sin: (T, Dh/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.attention = get_attention(cfg.attention)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q, k, v = self._project(x, cos, sin)
        return self._finish(x, self.attention(q, k, v))

    def cached(
        self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`forward` for the positions after `past`'s (cos/sin: their rotary rows), with the keys and
        values of all positions so far: (B, T, D) -> ((B, T, D), ((B, H, T0 + T, Dh) keys, values))."""
        q, k, v = self._project(x, cos, sin)
        if past is None:
            return self._finish(x, self.attention(q, k, v)), (k, v)
        k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)
        return self._finish(x, trailing_causal_attention(q, k, v)), (k, v)

    def _project(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, D) -> rotated queries, rotated keys, values, each (B, H, T, Dh)."""
        b, t, d = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _finish(self, x: Tensor, attn: Tensor) -> Tensor:
        """Residual attention output and gated MLP; attn: (B, H, T, Dh) -> (B, T, D)."""
        b, t, d = x.shape
        x = x + self.out(attn.transpose(1, 2).reshape(b, t, d))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LlamaBackbone(PlainBackboneDefaults, nn.Module):
    """A small Llama-style decoder implementing the Backbone protocol."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.config = cfg
        self.hidden_size = cfg.hidden_size
        self.vocab_size = cfg.vocab_size
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embedding.weight
        cos, sin = rotary_tables(cfg.hidden_size // cfg.num_heads, cfg.max_positions, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init_weights)

    @property
    def max_positions(self) -> int:
        return self.config.max_positions

    def embed(self, ids: Tensor) -> Tensor:
        return self.embedding(ids)

    def hidden(self, embeds: Tensor) -> Tensor:
        cos, sin = self._rotary(0, embeds)
        x = embeds
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def decodes_incrementally(self) -> bool:
        return True

    def prefill(self, embeds: Tensor) -> tuple[Tensor, KVCache]:
        return self._run_cached(embeds, [None] * len(self.blocks), 0)

    def extend(self, embeds: Tensor, cache: KVCache) -> tuple[Tensor, KVCache]:
        return self._run_cached(embeds, cache, cache[0][0].shape[2])

    def _run_cached(
        self, embeds: Tensor, cache: Sequence[tuple[Tensor, Tensor] | None], start: int
    ) -> tuple[Tensor, KVCache]:
        """Positions start .. start + T of the sequence: (B, T, D) -> ((B, T, D), the grown cache)."""
        cos, sin = self._rotary(start, embeds)
        x, grown = embeds, []
        for block, past in zip(self.blocks, cache):
            x, kv = block.cached(x, cos, sin, past)
            grown.append(kv)
        return self.norm(x), grown

    def _rotary(self, start: int, embeds: Tensor) -> tuple[Tensor, Tensor]:
        """(T, Dh/2) cos and sin for positions start .. start + T, in the embeddings' dtype."""
        end = start + embeds.shape[1]
        if end > self.config.max_positions:
            raise ValueError(f"sequence of {end} positions exceeds max_positions={self.config.max_positions}")
        return self.rope_cos[start:end].to(embeds.dtype), self.rope_sin[start:end].to(embeds.dtype)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def decoder_layers(self) -> nn.ModuleList:
        return self.blocks

    def head_weight(self) -> Tensor:
        return self.head.weight

    def supports_double_backward(self) -> bool:
        return DOUBLE_BACKWARD[self.config.attention]

    def describe(self) -> dict[str, Any]:
        return {"name": "llama", **asdict(self.config)}


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
