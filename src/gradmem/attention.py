"""Causal attention kernels, chosen by name, with what each supports for second order.

GradMem's meta-gradient differentiates through the WRITE gradient, so attention needs a double
backward. PyTorch's fused SDPA kernels do not have one; `math` is written from differentiable ops.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]

_MASK_CACHE: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def causal_bias(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(T, T) additive mask: 0 on and below the diagonal, -inf above. Cached per size/device/dtype."""
    key = (length, device, dtype)
    bias = _MASK_CACHE.get(key)
    if bias is None:
        bias = torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu(1)
        _MASK_CACHE[key] = bias
    return bias


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention from plain ops (any order of derivatives).

    q, k, v: (B, H, T, Dh) -> (B, H, T, Dh).
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.baddbmm(
        causal_bias(q.shape[-2], q.device, q.dtype).expand(q.shape[0] * q.shape[1], -1, -1),
        q.flatten(0, 1),
        k.flatten(0, 1).transpose(1, 2),
        alpha=scale,
    )  # (B*H, T, T)
    probs = torch.softmax(scores, dim=-1)
    return torch.bmm(probs, v.flatten(0, 1)).view_as(q)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch fused causal attention: fastest first order, but no double backward."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


ATTENTION: dict[str, AttentionFn] = {"math": math_attention, "sdpa": sdpa_attention}
DOUBLE_BACKWARD = {"math": True, "sdpa": False}


def get_attention(name: str) -> AttentionFn:
    """Look an attention kernel up by name."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}; valid: {sorted(ATTENTION)}")
    return ATTENTION[name]
