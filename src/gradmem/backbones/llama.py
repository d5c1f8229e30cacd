"""Built-in Llama-style decoder: RMSNorm, rotary positions, gated MLP, causal attention.

Small and written for second-order meta-training speed: one fused QKV projection, one fused
gate/up projection, rotary tables computed once, and an attention kernel with double backward.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradmem.core.attention import DOUBLE_BACKWARD, get_attention


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
        b, t, d = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        attn = self.attention(q, k, v).transpose(1, 2).reshape(b, t, d)
        x = x + self.out(attn)
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class LlamaBackbone(nn.Module):
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
        t = embeds.shape[1]
        if t > self.config.max_positions:
            raise ValueError(f"sequence of {t} positions exceeds max_positions={self.config.max_positions}")
        cos = self.rope_cos[:t].to(embeds.dtype)
        sin = self.rope_sin[:t].to(embeds.dtype)
        x = embeds
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.norm(x)

    def logits(self, hidden: Tensor) -> Tensor:
        return self.head(hidden)

    def decoder_layers(self) -> nn.ModuleList:
        return self.blocks

    def head_weight(self) -> Tensor:
        return self.head.weight

    def write_mode(self) -> AbstractContextManager[None]:
        return nullcontext()  # nothing is WRITE-only in a plain backbone (see gradmem.backbones.adapted)

    def uses_bf16(self, device_type: str) -> bool:
        return False  # computes in the weights' dtype; bf16 autocast is an option of AdaptedBackbone

    def full_precision(self) -> AbstractContextManager[None]:
        return nullcontext()

    def supports_double_backward(self) -> bool:
        return DOUBLE_BACKWARD[self.config.attention]

    def describe(self) -> dict[str, Any]:
        return {"name": "llama", **asdict(self.config)}


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
