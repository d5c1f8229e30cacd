"""Causal attention kernels, chosen by name, with what each supports for second order.

GradMem's meta-gradient differentiates through the WRITE gradient, so attention needs a double
backward. PyTorch's fused SDPA kernels do not have one; `math` is written from differentiable ops.
`sdpa_explicit` runs the fused kernel forward and writes its backward out as differentiable ops
(recomputing the attention probabilities, flash-style), so it works at any order and keeps no
(T, T) tensor alive between a forward and its backward. `sdpa_hvp` also writes out the second
derivative (the Hessian-vector product of meta-training) by hand: less memory than autograd's
generic double backward, second order only. Both are registered for Hugging Face models as
`attn_implementation="gradmem_sdpa_explicit"` / `"gradmem_sdpa_hvp"` (see `register_hf_attention`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]
HF_ATTENTION_NAME = "gradmem_sdpa_explicit"
HF_HVP_ATTENTION_NAME = "gradmem_sdpa_hvp"

# The most recently used masks. Bounded: a server sees every sequence length its clients send, and
# one (T, T) mask per length ever seen grew a process by gigabytes. A training step uses a few
# lengths (write, read), so a handful of entries keeps its hits; a miss costs one fill, far less
# than the attention it serves.
MASK_CACHE_SIZE = 8
_MASK_CACHE: OrderedDict[tuple[int, torch.device, torch.dtype], Tensor] = OrderedDict()
_MASK_LOCK = threading.Lock()


def causal_bias(length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(T, T) additive mask: 0 on and below the diagonal, -inf above. The last MASK_CACHE_SIZE
    (size, device, dtype) combinations used are cached."""
    key = (length, device, dtype)
    with _MASK_LOCK:
        bias = _MASK_CACHE.get(key)
        if bias is not None:
            _MASK_CACHE.move_to_end(key)
            return bias
    bias = torch.full((length, length), float("-inf"), device=device, dtype=dtype).triu(1)
    with _MASK_LOCK:
        _MASK_CACHE[key] = bias
        while len(_MASK_CACHE) > MASK_CACHE_SIZE:
            _MASK_CACHE.popitem(last=False)
    return bias


def _causal_probs(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """(N, T, T) causal softmax of scale * q k^T, from differentiable ops. q, k: (N, T, Dh)."""
    t = q.shape[-2]
    scores = torch.baddbmm(
        causal_bias(t, q.device, q.dtype).expand(q.shape[0], -1, -1), q, k.transpose(1, 2), alpha=scale
    )
    return torch.softmax(scores, dim=-1)


def math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax attention from plain ops (any order of derivatives).

    q, k, v: (B, H, T, Dh) -> (B, H, T, Dh).
    """
    probs = _causal_probs(q.flatten(0, 1), k.flatten(0, 1), 1.0 / math.sqrt(q.shape[-1]))  # (B*H, T, T)
    return torch.bmm(probs, v.flatten(0, 1)).view_as(q)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """PyTorch fused causal attention: fastest first order, but no double backward."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def trailing_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal attention of the last N of S positions (a decode step against a KV cache): query i
    sits at position S - N + i and sees keys 0 .. S - N + i. q: (B, H, N, Dh), k, v: (B, H, S, Dh).
    Forward only (no double backward needed while decoding); a single query sees every key."""
    n, s = q.shape[-2], k.shape[-2]
    # SDPA's is_causal aligns the mask top-left, which is wrong when N < S: the mask is built here.
    mask = None if n == 1 else torch.ones(n, s, dtype=torch.bool, device=q.device).tril(s - n)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_backward(q: Tensor, k: Tensor, v: Tensor, grad: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of causal softmax attention, written out as differentiable ops.

    q, k, v, grad: (N, T, Dh). With P = softmax(scale q k^T + causal mask) and O = P v:
    dv = P^T dO, dP = dO v^T, dS = P * (dP - rowsum(P * dP)), dq = scale dS k, dk = scale dS^T q.
    """
    probs = _causal_probs(q, k, scale)  # (N, T, T), recomputed rather than kept from the forward
    dv = torch.bmm(probs.transpose(1, 2), grad)
    dprobs = torch.bmm(grad, v.transpose(1, 2))
    # softmax backward, P * (dP - rowsum(P * dP)), as one fused op that has its own derivative
    dscores = torch._softmax_backward_data(dprobs, probs, -1, probs.dtype)
    dq = torch.bmm(dscores, k * scale)
    dk = torch.bmm(dscores.transpose(1, 2), q * scale)
    return dq, dk, dv


class _AttentionGrad(torch.autograd.Function):
    """(q, k, v, dO) -> (dq, dk, dv) of causal attention, with a hand-written backward: the
    Hessian-vector product second-order training needs, in 10 bmm and a few (T, T) passes, keeping
    only P, dP, dS between the two. Asking for its graph (third order) raises."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, grad: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
        probs = _causal_probs(q, k, scale)  # (N, T, T)
        dprobs = torch.bmm(grad, v.transpose(1, 2))
        rowdot = (probs * dprobs).sum(-1, keepdim=True)  # (N, T, 1)
        dscores = probs * (dprobs - rowdot)
        ctx.save_for_backward(q, k, v, grad, probs, dprobs, dscores, rowdot)
        ctx.scale = scale
        return (
            torch.bmm(dscores, k * scale),
            torch.bmm(dscores.transpose(1, 2), q * scale),
            torch.bmm(probs.transpose(1, 2), grad),
        )

    @staticmethod
    def backward(ctx: Any, a_q: Tensor, a_k: Tensor, a_v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None]:
        if torch.is_grad_enabled():  # create_graph: P, dP, dS are constants here, a graph would be wrong
            raise RuntimeError(
                "attention 'sdpa_hvp' has an explicit second derivative only; for a third "
                "derivative use 'sdpa_explicit' or 'math'"
            )
        q, k, v, grad, probs, dprobs, dscores, rowdot = ctx.saved_tensors
        s = ctx.scale
        # cotangent of dS from dq = s dS k and dk = s dS^T q
        g_ds = torch.baddbmm(torch.bmm(a_q * s, k.transpose(1, 2)), q * s, a_k.transpose(1, 2))
        # through dS = P * (dP - rowsum(P * dP))
        h = g_ds - (g_ds * probs).sum(-1, keepdim=True)
        g_dp = probs * h
        g_p = torch.baddbmm(dprobs * h - g_ds * rowdot, grad, a_v.transpose(1, 2))  # + from dv = P^T dO
        g_s = torch._softmax_backward_data(g_p, probs, -1, probs.dtype) * s  # through P = softmax(s q k^T)
        g_q = torch.baddbmm(torch.bmm(dscores, a_k * s), g_s, k)
        g_k = torch.baddbmm(torch.bmm(dscores.transpose(1, 2), a_q * s), g_s.transpose(1, 2), q)
        g_v = torch.bmm(g_dp.transpose(1, 2), grad)
        g_grad = torch.baddbmm(torch.bmm(probs, a_v), g_dp, v)
        return g_q, g_k, g_v, g_grad, None


class _FusedSdpa(torch.autograd.Function):
    """Fused SDPA forward; the backward is written out, so autograd can differentiate through it.

    hvp=False: the backward is plain differentiable ops (any order of derivatives).
    hvp=True: a backward that builds a graph goes through `_AttentionGrad` (hand-written second
    derivative, keeps only P, dP, dS); third order raises.
    """

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor, scale: float, hvp: bool) -> Tensor:
        ctx.save_for_backward(q, k, v)
        ctx.scale, ctx.hvp = scale, hvp
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v = ctx.saved_tensors
        shape = q.shape  # (B, H, T, Dh)
        flat = [x.reshape(-1, *shape[-2:]) for x in (q, k, v, grad)]  # (B*H, T, Dh)
        # Only a backward that builds a graph (create_graph) needs the node that keeps P, dP, dS.
        backward = _AttentionGrad.apply if ctx.hvp and torch.is_grad_enabled() else attention_backward
        dq, dk, dv = backward(*flat, ctx.scale)
        return dq.view(shape), dk.view(shape), dv.view(shape), None, None


def sdpa_hvp_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Causal attention: fused SDPA forward, explicit backward AND explicit double backward
    (second order; a third derivative raises). q, k, v: (B, H, T, Dh) -> (B, H, T, Dh)."""
    return _FusedSdpa.apply(q, k, v, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, True)


def sdpa_explicit_attention(q: Tensor, k: Tensor, v: Tensor, scale: float | None = None) -> Tensor:
    """Causal attention: fused SDPA forward, explicit differentiable backward (any order).

    q, k, v: (B, H, T, Dh) -> (B, H, T, Dh); scale defaults to 1/sqrt(Dh).
    """
    return _FusedSdpa.apply(q, k, v, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale, False)


ATTENTION: dict[str, AttentionFn] = {
    "math": math_attention,
    "sdpa": sdpa_attention,
    "sdpa_explicit": sdpa_explicit_attention,
    "sdpa_hvp": sdpa_hvp_attention,
}
DOUBLE_BACKWARD = {"math": True, "sdpa": False, "sdpa_explicit": True, "sdpa_hvp": True}


def get_attention(name: str) -> AttentionFn:
    """Look an attention kernel up by name."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}; valid: {sorted(ATTENTION)}")
    return ATTENTION[name]


def _hf_kernel(kernel: Callable[..., Tensor], name: str) -> Callable[..., tuple[Tensor, None]]:
    """A `transformers` attention-interface function around one of our causal kernels:
    (B, H, T, Dh) in, (B, T, H, Dh) out. gradmem right-pads and passes no mask, so none reaches here."""

    def attention(
        module: Any,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[Tensor, None]:
        if attention_mask is not None:
            raise ValueError(f"{name} is causal-only and takes no attention mask")
        if dropout > 0 or kwargs.get("sliding_window") or kwargs.get("softcap"):
            raise ValueError(f"{name} supports neither dropout, sliding windows nor softcapping")
        groups = query.shape[1] // key.shape[1]
        if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
            key, value = (x.repeat_interleave(groups, dim=1) for x in (key, value))
        return kernel(query, key, value, scaling).transpose(1, 2).contiguous(), None

    return attention


# transformers attn_implementation name -> our kernel; all have a double backward
HF_KERNELS = {HF_ATTENTION_NAME: sdpa_explicit_attention, HF_HVP_ATTENTION_NAME: sdpa_hvp_attention}


def register_hf_attention() -> str:
    """Register our kernels with `transformers` (idempotent) as `gradmem_sdpa_explicit` and
    `gradmem_sdpa_hvp`; returns the first name."""
    from transformers import AttentionInterface

    for name, kernel in HF_KERNELS.items():
        AttentionInterface.register(name, _hf_kernel(kernel, name))
    return HF_ATTENTION_NAME
