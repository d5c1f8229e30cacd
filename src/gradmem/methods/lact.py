"""LaCT (Zhang et al. 2025, "Test-Time Training Done Right") as a memory: per-layer SwiGLU fast
weights written by a large-chunk update on the context.

Attachment: as TTT-Linear here (gradmem.methods.ttt_linear), one fast-weight layer per decoder
layer alongside the backbone's attention, reading and adding to the layer's input. That is LaCT's
own language-model layout (window attention and the fast weights side by side in each block,
attention handling order inside a chunk); the window here is the backbone's full causal attention.

Per decoder layer and head (H heads of width dh = D / H, SwiGLU width dm = expansion x dh):
    u = RMSNorm(x);  q, k, v = per-head views of silu(theta_{Q,K,V} u), q and k L2-normalised
    f(z) = W1 (silu(W0 z) * (W2 z))        W0, W2 (dm x dh), W1 (dh x dm)
    lr_t = softplus(theta_lr u_t + softplus^-1(inner_lr)), one per weight and head (3H per token)
    L(W) = - sum_t lr_t <f(k_t), v_t>        LaCT's dot-product loss, summed over the chunk
    W <- W - grad_W L  (orthogonalised by Newton-Schulz first when `muon`)
    W <- W / ||W||_row * ||W0||_row          LaCT's weight normalisation: every row keeps its norm
One chunk is the whole context, updated once (K = 1; K > 1 repeats the update on the same chunk).
W0, W1, W2 are learned initial fast weights (normal / sqrt(fan-in), as in LaCT), as are the
projections, the per-token lr map, the per-head output RMSNorm and the output map; the gradient is
written out in closed form, so the outer gradient flows through the update at full second order.
READ: o = theta_O concat_h RMSNorm(f(q)) with the written W, added to every query token's input.
`muon` (LaCT's normalisation of the update, recommended by its authors once a chunk is longer than
twice the head width) is on by default: the orthogonalised update has a unit spectral scale
whatever the inner lr and the context's length, so lr only weighs tokens against each other; with
inner lr 0.001 and contexts of 8-113 tokens the plain summed gradient is a tiny step (a 5-minute
4-pair smoke run without it never learned 1 pair, with it 1 pair in 0.5 min; docs/results.md).
LaCT's momentum acts across chunks, so with one chunk it has nothing to do and is left out.

State per example: layers x H x 3 x dh x dm floats; with the paper's 4 layers x 128 width, 4 heads
and expansion 1 (dh = dm = 32) that is 49,152, the paper's count. The row norms W is normalised to
are W0's, shared by all examples, so they are not part of the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradmem.methods.fast_weights import FastWeightMemory, State, no_autocast

NORM_EPS = 1e-5  # LaCT's epsilon of the row and L2 normalisations
# the quintic Newton-Schulz iteration of the Muon optimiser (Jordan et al. 2024): 5 steps bring
# every singular value of a normalised matrix into roughly [0.7, 1.2]
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 5


@dataclass
class LaCTConfig:
    """Shape of the per-layer SwiGLU fast weights and how they are written."""

    num_heads: int = 4  # H, fast-weight heads per layer; must divide the backbone width
    expansion: float = 1.0  # SwiGLU hidden width dm = expansion x head width
    inner_lr: float = 0.001  # base per-token lr (softplus offset; the paper's appendix H uses 0.001)
    muon: bool = True  # orthogonalise each weight's update by Newton-Schulz before applying it
    steps: int = 1  # K, updates on the context chunk; may be overridden at evaluation time
    init_std: float = 0.02  # std of the normal initialisation of the projections

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.steps < 0 or self.expansion <= 0:
            raise ValueError("num_heads must be >= 1, steps >= 0 and expansion > 0")
        if self.inner_lr <= 0 or self.init_std <= 0:
            raise ValueError(f"inner_lr and init_std must be > 0, got {self.inner_lr}, {self.init_std}")


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


def swiglu(weights: State, z: Tensor) -> Tensor:
    """f(z) = W1 (silu(W0 z) * (W2 z)) for (B, H, T, dh) inputs; W0, W2 (B, H, dm, dh), W1 (B, H, dh, dm)."""
    w0, w1, w2 = weights
    return (F.silu(z @ w0.transpose(-1, -2)) * (z @ w2.transpose(-1, -2))) @ w1.transpose(-1, -2)


def lact_descent(weights: State, keys: Tensor, values: Tensor, lrs: tuple[Tensor, Tensor, Tensor]) -> State:
    """- grad of L(W) = - sum_t lr_t <f(k_t), v_t>, per weight, in closed form.

    keys, values (B, H, T, dh); lrs: (B, H, T) per-token step sizes of W0, W1, W2 (zero on pads).
    With a = W0 k, c = W2 k, h = silu(a) * c and e = W1^T v: d<f(k), v>/dW1 = v h^T,
    /dW2 = (e * silu(a)) k^T, /dW0 = (e * c * silu'(a)) k^T, silu'(a) = s (1 + a (1 - s)), s = sigmoid(a).
    """
    w0, w1, w2 = weights
    a, c = keys @ w0.transpose(-1, -2), keys @ w2.transpose(-1, -2)  # (B, H, T, dm)
    s = torch.sigmoid(a)
    hidden = a * s * c
    e = values @ w1  # (B, H, T, dm)
    d_a = e * c * s * (1 + a * (1 - s))
    d_c = e * a * s
    lr0, lr1, lr2 = (lr[..., None] for lr in lrs)
    return (
        (lr0 * d_a).transpose(-1, -2) @ keys,
        (lr1 * values).transpose(-1, -2) @ hidden,
        (lr2 * d_c).transpose(-1, -2) @ keys,
    )


def newton_schulz(g: Tensor) -> Tensor:
    """Approximate orthogonalisation U V^T of each (..., m, n) matrix G = U S V^T (Muon)."""
    wide = g.shape[-2] <= g.shape[-1]
    x = g if wide else g.transpose(-1, -2)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    a, b, c = NEWTON_SCHULZ
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.transpose(-1, -2)


def lact_update(weights: State, descent: State, row_norms: State, muon: bool) -> State:
    """W + dW (orthogonalised when `muon`), each row rescaled to its norm in `row_norms`."""
    new = []
    for w, d, norm in zip(weights, descent, row_norms):
        w = w + (newton_schulz(d) if muon else d)
        new.append(w / (w.norm(dim=-1, keepdim=True) + NORM_EPS) * norm)
    return tuple(new)


class LaCTCell(nn.Module):
    """One decoder layer's LaCT memory (a gradmem.methods.fast_weights.FastWeightCell)."""

    def __init__(self, width: int, cfg: LaCTConfig) -> None:
        super().__init__()
        if width % cfg.num_heads:
            raise ValueError(f"num_heads={cfg.num_heads} does not divide the backbone width {width}")
        h, dh = cfg.num_heads, width // cfg.num_heads
        dm = max(1, round(cfg.expansion * dh))
        self.heads, self.head_dim, self.muon = h, dh, cfg.muon
        self.lr_offset = inverse_softplus(cfg.inner_lr)
        self.norm = nn.RMSNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.lr_proj = nn.Linear(width, 3 * h)  # per token: one lr per fast weight and head
        self.out_norm = nn.RMSNorm(dh, eps=NORM_EPS)  # per head, shared by the heads (as LaCT's)
        self.out = nn.Linear(width, width, bias=False)
        self.w0 = nn.Parameter(torch.randn(h, dm, dh) / math.sqrt(dh))
        self.w1 = nn.Parameter(torch.randn(h, dh, dm) / math.sqrt(dm))
        self.w2 = nn.Parameter(torch.randn(h, dm, dh) / math.sqrt(dh))
        for linear in (self.qkv, self.lr_proj, self.out):
            nn.init.normal_(linear.weight, std=cfg.init_std)
        nn.init.zeros_(self.lr_proj.bias)

    def initial_state(self, batch: int) -> State:
        return tuple(w.expand(batch, -1, -1, -1) for w in (self.w0, self.w1, self.w2))

    def state_floats(self) -> int:
        return self.w0.numel() + self.w1.numel() + self.w2.numel()

    def _views(self, x: Tensor, parts: int) -> tuple[Tensor, list[Tensor]]:
        """(B, T, D) -> the normalised input u and the first `parts` of q, k, v as (B, H, T, dh)."""
        u = self.norm(x.to(self.w0.dtype))
        b, t, d = u.shape
        projected = F.silu(F.linear(u, self.qkv.weight[: parts * d])).view(b, t, parts, self.heads, self.head_dim)
        views = list(projected.permute(2, 0, 3, 1, 4).unbind(0))
        for i in range(min(parts, 2)):  # q and k are L2-normalised per head
            views[i] = views[i] / (views[i].norm(dim=-1, keepdim=True) + NORM_EPS)
        return u, views

    def write(self, x: Tensor, mask: Tensor, steps: int, lr: float | None) -> State:
        """Fast weights after `steps` large-chunk updates on the real tokens of the (B, T, D) input x."""
        with no_autocast(x):
            u, (_, k, v) = self._views(x, 3)
            offset = self.lr_offset if lr is None else inverse_softplus(lr)
            lr_all = F.softplus(self.lr_proj(u) + offset) * mask.to(u.dtype)[..., None]  # (B, T, 3H)
            lrs = tuple(lr_all.view(*lr_all.shape[:2], 3, self.heads).permute(2, 0, 3, 1).unbind(0))  # (B, H, T)
            weights = self.initial_state(len(x))
            row_norms = tuple(w.norm(dim=-1, keepdim=True) for w in weights)
            for _ in range(steps):
                weights = lact_update(weights, lact_descent(weights, k, v, lrs), row_norms, self.muon)
        return weights

    def read(self, state: State, x: Tensor) -> Tensor:
        """(B, T, D) layer input -> (B, T, D): theta_O concat_h RMSNorm(f(q))."""
        with no_autocast(x):
            _, (q,) = self._views(x, 1)
            out = self.out(self.out_norm(swiglu(state, q)).transpose(1, 2).flatten(2))
        return out.to(x.dtype)


class LaCT(FastWeightMemory):
    """LaCT memory (see module docstring); state per example: layers x H x 3 x dh x dm floats."""

    name = "lact"
    cell_class = LaCTCell
