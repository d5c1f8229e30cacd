"""TTT-Linear (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States") as a memory: per-layer linear fast weights written by a gradient step on the context.

Attachment: one TTT-Linear layer per decoder layer, *alongside* the backbone's attention: it reads
the layer's input (the residual stream) and adds its output to it (gradmem.methods.fast_weights),
like ARMT's memories. The papers put the TTT layer *in place of* attention in a model trained
from scratch; here every method shares one backbone (the same attention, MLPs, embeddings), so
the fast weights are added to it, and the query's own tokens are mixed by attention, as the
query is too short to need a recurrent layer for itself.

Per decoder layer and head (H heads of width dh = D / H), with x the layer's input:
    u = LN(x);  q, k, v = per-head views of theta_Q u, theta_K u, theta_V u      (B, H, T, dh)
    f(z; W, b) = z + LN_h(z W + b)         the inner model: linear, with TTT's LayerNorm + residual
    l_t(W, b) = 1/2 || f(k_t; W, b) - v_t ||^2    self-supervised reconstruction of a view of token t
    eta_t = eta_base * sigmoid(theta_lr u_t) / dh  TTT's learned per-token, per-head inner lr
    W <- W - (1/N) sum_t eta_t grad_W l_t  (b likewise): one mini-batch step over the N real tokens
The whole context is one TTT mini-batch (K = 1 step by default; K > 1 repeats the step on the same
tokens). W0 (normal, std init_std) and b0 (zeros) are learned, as are the projections, the per-head
LN_h, the input LN and the output map. The gradient is written out in closed form (what TTT's own
implementation does), so it is plain differentiable arithmetic: the outer gradient flows through
the update at full second order without autograd's create_graph.
READ: o = theta_O LN(concat_h f(q; W_K, b_K)), added to every query token's layer input.

State per example: layers x H x (dh^2 + dh) floats, W and b of every head; with the paper's
4 layers x 128 width and 4 heads (dh = 32) that is 16,896, the paper's count. The learned initial
weights and maps are shared by all examples and not counted, as GradMem's M0 is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradmem.methods.fast_weights import FastWeightMemory, State, no_autocast

LN_EPS = 1e-6  # epsilon of the per-head LayerNorm inside f


@dataclass
class TTTLinearConfig:
    """Shape of the per-layer fast weights and how they are written."""

    num_heads: int = 4  # H, fast-weight heads per layer; must divide the backbone width
    inner_lr: float = 1.0  # eta_base (the paper's appendix H uses 1.0); WriteOptions.lr overrides it
    steps: int = 1  # K, inner gradient steps on the context; may be overridden at evaluation time
    init_std: float = 0.02  # std of the normal initialisation of W0 and of the projections

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.steps < 0:
            raise ValueError(f"num_heads must be >= 1 and steps >= 0, got {self.num_heads}, {self.steps}")
        if self.inner_lr <= 0 or self.init_std <= 0:
            raise ValueError(f"inner_lr and init_std must be > 0, got {self.inner_lr}, {self.init_std}")


def head_layer_norm(z: Tensor, weight: Tensor, bias: Tensor, eps: float = LN_EPS) -> Tensor:
    """LayerNorm over the last dim of (B, H, T, dh), with per-head affine weight and bias (H, dh)."""
    return F.layer_norm(z, z.shape[-1:], eps=eps) * weight[:, None] + bias[:, None]


def ttt_linear_step(
    w: Tensor, b: Tensor, ln_weight: Tensor, ln_bias: Tensor, keys: Tensor, values: Tensor, eta: Tensor
) -> tuple[Tensor, Tensor]:
    """One inner gradient step of TTT-Linear, in closed form.

    w (B, H, dh, dh), b (B, H, dh): the fast weights; ln_weight, ln_bias (H, dh): LN_h's affine;
    keys, values (B, H, T, dh); eta (B, H, T): each token's step size (zero on pads). Returns
    (w - sum_t eta_t grad_w l_t, b - sum_t eta_t grad_b l_t), l_t = 1/2 ||k_t + LN_h(k_t w + b) - v_t||^2.
    With y = gamma x_hat + beta, x_hat = (z - mean z) / s, s = sqrt(var z + eps), and
    g = gamma (y - (v - k)): dl/dz = (g - mean(g) - x_hat mean(g x_hat)) / s.
    """
    z = keys @ w + b[:, :, None]  # (B, H, T, dh)
    s = (z.var(-1, unbiased=False, keepdim=True) + LN_EPS).sqrt()
    x_hat = (z - z.mean(-1, keepdim=True)) / s
    gamma = ln_weight[:, None]  # (H, 1, dh)
    g = gamma * (gamma * x_hat + ln_bias[:, None] - (values - keys))
    dz = (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True)) / s
    dz = eta[..., None] * dz
    return w - keys.transpose(-1, -2) @ dz, b - dz.sum(-2)


class TTTLinearCell(nn.Module):
    """One decoder layer's TTT-Linear memory (a gradmem.methods.fast_weights.FastWeightCell)."""

    def __init__(self, width: int, cfg: TTTLinearConfig) -> None:
        super().__init__()
        if width % cfg.num_heads:
            raise ValueError(f"num_heads={cfg.num_heads} does not divide the backbone width {width}")
        self.heads, self.head_dim, self.inner_lr = cfg.num_heads, width // cfg.num_heads, cfg.inner_lr
        h, dh = self.heads, self.head_dim
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=False)  # theta_Q, theta_K, theta_V
        self.lr_gate = nn.Linear(width, h)  # theta_lr, one gate per head
        self.out = nn.Linear(width, width, bias=False)  # theta_O
        self.post_norm = nn.LayerNorm(width)
        self.w0 = nn.Parameter(torch.randn(h, dh, dh) * cfg.init_std)  # (H, dh, dh)
        self.b0 = nn.Parameter(torch.zeros(h, dh))  # (H, dh)
        self.ln_weight = nn.Parameter(torch.ones(h, dh))  # LN_h inside f
        self.ln_bias = nn.Parameter(torch.zeros(h, dh))
        for linear in (self.qkv, self.lr_gate, self.out):
            nn.init.normal_(linear.weight, std=cfg.init_std)
        nn.init.zeros_(self.lr_gate.bias)

    def initial_state(self, batch: int) -> State:
        return self.w0.expand(batch, -1, -1, -1), self.b0.expand(batch, -1, -1)

    def state_floats(self) -> int:
        return self.w0.numel() + self.b0.numel()

    def _views(self, x: Tensor, parts: int) -> tuple[Tensor, list[Tensor]]:
        """(B, T, D) -> the normalised input u and the first `parts` of q, k, v as (B, H, T, dh)."""
        u = self.norm(x.to(self.w0.dtype))
        b, t, d = u.shape
        projected = F.linear(u, self.qkv.weight[: parts * d]).view(b, t, parts, self.heads, self.head_dim)
        return u, list(projected.permute(2, 0, 3, 1, 4).unbind(0))

    def write(self, x: Tensor, mask: Tensor, steps: int, lr: float | None) -> State:
        """Fast weights after `steps` TTT steps on the real tokens of the (B, T, D) input x."""
        with no_autocast(x):
            u, (_, k, v) = self._views(x, 3)
            real = mask.to(u.dtype)  # (B, T)
            share = real / real.sum(-1, keepdim=True)  # the step is the mean over real tokens
            base = self.inner_lr if lr is None else lr
            eta = base * torch.sigmoid(self.lr_gate(u)).transpose(1, 2) / self.head_dim * share[:, None]  # (B, H, T)
            w, b = self.initial_state(len(x))
            for _ in range(steps):
                w, b = ttt_linear_step(w, b, self.ln_weight, self.ln_bias, k, v, eta)
        return w, b

    def read(self, state: State, x: Tensor) -> Tensor:
        """(B, T, D) layer input -> (B, T, D): theta_O LN(concat_h f(q; W, b))."""
        w, b = state
        with no_autocast(x):
            _, (q,) = self._views(x, 1)
            z = q + head_layer_norm(q @ w + b[:, :, None], self.ln_weight, self.ln_bias)  # (B, H, T, dh)
            out = self.out(self.post_norm(z.transpose(1, 2).flatten(2)))
        return out.to(x.dtype)


class TTTLinear(FastWeightMemory):
    """TTT-Linear memory (see module docstring); state per example: layers x H x (dh^2 + dh) floats."""

    name = "ttt_linear"
    cell_class = TTTLinearCell
