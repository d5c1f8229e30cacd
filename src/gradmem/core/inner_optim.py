"""Pure, differentiable inner optimisers (SGD, Adam) and gradient clipping for the WRITE loop.

The WRITE runs K optimiser steps on per-example tensors (memory, optional fast weights) and the
outer loop differentiates through them, so every function here is out-of-place tensor math: no
in-place ops, no ``no_grad``, no ``detach``. Each optimiser is an (init, update) pair in
``OPTIMIZERS``; ``step`` clips, then dispatches through that dict, so callers never branch on
a name.
Every tensor has a leading batch dim B: one independent problem per example.

``adam_reference`` reproduces the authors' reference code: its Adam step is computed without a
graph (so the WRITE is first order whatever the grad mode), with the gradient clamped to +-10 and
v_hat >= 1e-8. It is there for parity checks; ``adam`` is the differentiable Adam of the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

Params = tuple[Tensor, ...]


@dataclass(frozen=True)
class InnerOptimConfig:
    """How one WRITE updates its tensors."""

    name: str = "sgd"  # optimiser, a key of OPTIMIZERS ("sgd" | "adam" | "adam_reference")
    lr: float = 0.4  # inner step size alpha (the paper uses 0.4 for the NLP tasks)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates, as in torch.optim.Adam
    eps: float = 1e-8  # Adam denominator guard, added after sqrt as in torch.optim.Adam
    clip_value: float | None = None  # clamp each gradient element to [-v, v]; None = off
    clip_norm: float | None = None  # cap each example's gradient L2 norm (all tensors); None = off
    clip_eps: float = 0.0  # norm clipping scales by clip / (norm + clip_eps); the reference code uses 1e-6

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown inner optimiser {self.name!r}; valid: {sorted(OPTIMIZERS)}")
        _check_lr(self.lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if self.eps < 0 or self.clip_eps < 0:
            raise ValueError(f"eps and clip_eps must be >= 0, got {self.eps}, {self.clip_eps}")
        if not OPTIMIZERS[self.name].uses_clipping and (self.clip_value is not None or self.clip_norm is not None):
            raise ValueError(
                f"{self.name!r} clamps its gradients itself (to +-{REFERENCE_ADAM_CLAMP}) and "
                "ignores clip_value / clip_norm, as the reference code does; leave them unset"
            )
        for field in ("clip_value", "clip_norm"):
            value = getattr(self, field)
            if value is not None and not value > 0:
                raise ValueError(f"{field} must be > 0 or None, got {value}")


class InnerState(NamedTuple):
    """Optimiser state for one WRITE: created by ``init_state``, lives only across its K steps."""

    step: int  # number of updates taken so far
    exp_avg: Params = ()  # Adam first moments, one per param (same shapes); () for SGD
    exp_avg_sq: Params = ()  # Adam second moments, one per param; () for SGD


InitFn = Callable[[Params, InnerOptimConfig], InnerState]
UpdateFn = Callable[[Params, Params, InnerState, InnerOptimConfig, float], tuple[Params, InnerState]]


class InnerOptimizer(NamedTuple):
    """A pure optimiser: ``init`` builds the state, ``update`` returns new params and state."""

    init: InitFn
    update: UpdateFn
    differentiable: bool = True  # False: the update is a constant for the outer gradient (first order)
    uses_clipping: bool = True  # False: clip_value / clip_norm do not apply (the optimiser clamps itself)


def _check_lr(lr: float) -> None:
    if not 0 < lr < math.inf:  # an infinite step writes a NaN memory
        raise ValueError(f"lr must be > 0 and finite, got {lr}")


def _sgd_init(params: Params, cfg: InnerOptimConfig) -> InnerState:
    return InnerState(step=0)


def _sgd_update(
    params: Params, grads: Params, state: InnerState, cfg: InnerOptimConfig, lr: float
) -> tuple[Params, InnerState]:
    new_params = tuple(p - lr * g for p, g in zip(params, grads))
    return new_params, InnerState(step=state.step + 1)


def _adam_init(params: Params, cfg: InnerOptimConfig) -> InnerState:
    zeros = tuple(torch.zeros_like(p) for p in params)
    return InnerState(step=0, exp_avg=zeros, exp_avg_sq=zeros)


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with derivative 0 (not inf) at x == 0; the forward value is exactly sqrt(x).

    A gradient element that is exactly zero gives v == 0, and plain sqrt would then put
    inf * 0 = nan into the outer (second-order) gradient.
    """
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _adam_update(
    params: Params, grads: Params, state: InnerState, cfg: InnerOptimConfig, lr: float
) -> tuple[Params, InnerState]:
    # Same operation order as torch.optim.Adam (single-tensor path) so float64 results match.
    beta1, beta2 = cfg.betas
    t = state.step + 1
    step_size = lr / (1 - beta1**t)
    bias_correction2_sqrt = math.sqrt(1 - beta2**t)
    new_params, new_m, new_v = [], [], []
    for p, g, m, v in zip(params, grads, state.exp_avg, state.exp_avg_sq):
        m = torch.lerp(m, g, 1 - beta1)
        v = v * beta2 + (1 - beta2) * (g * g)
        denom = _safe_sqrt(v) / bias_correction2_sqrt + cfg.eps
        new_params.append(p - step_size * (m / denom))
        new_m.append(m)
        new_v.append(v)
    return tuple(new_params), InnerState(step=t, exp_avg=tuple(new_m), exp_avg_sq=tuple(new_v))


REFERENCE_ADAM_CLAMP = 10.0  # the reference code clamps every inner gradient element to +-10 for Adam
REFERENCE_ADAM_VHAT_MIN = 1e-8  # ... and v_hat from below before the square root


def _adam_reference_update(
    params: Params, grads: Params, state: InnerState, cfg: InnerOptimConfig, lr: float
) -> tuple[Params, InnerState]:
    # The step is a constant for the outer gradient: computed from detached tensors, as the reference
    # code computes it under no_grad, so dM_{k+1}/dM_k = I.
    beta1, beta2 = cfg.betas
    t = state.step + 1
    new_params, new_m, new_v = [], [], []
    for p, g, m, v in zip(params, grads, state.exp_avg, state.exp_avg_sq):
        g = g.detach().clamp(-REFERENCE_ADAM_CLAMP, REFERENCE_ADAM_CLAMP)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1**t)
        v_hat = (v / (1 - beta2**t)).clamp_min(REFERENCE_ADAM_VHAT_MIN)
        new_params.append(p - lr * m_hat / (v_hat.sqrt() + cfg.eps))
        new_m.append(m)
        new_v.append(v)
    return tuple(new_params), InnerState(step=t, exp_avg=tuple(new_m), exp_avg_sq=tuple(new_v))


# The pair registry: generic code looks optimisers up here instead of branching on the name.
OPTIMIZERS: dict[str, InnerOptimizer] = {
    "sgd": InnerOptimizer(_sgd_init, _sgd_update),
    "adam": InnerOptimizer(_adam_init, _adam_update),
    "adam_reference": InnerOptimizer(_adam_init, _adam_reference_update, differentiable=False, uses_clipping=False),
}


def per_example_norm(tensors: Params) -> Tensor:
    """L2 norm of each example over all tensors together; (B, ...) each -> (B,).

    The squared sum is clamped away from zero so the norm stays differentiable at a zero gradient.
    """
    sq = sum(t.reshape(t.shape[0], -1).pow(2).sum(dim=1) for t in tensors)  # (B,)
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


def clip_gradients(grads: Params, cfg: InnerOptimConfig) -> Params:
    """Clip element-wise (``cfg.clip_value``), then per example by norm (``cfg.clip_norm``).

    Each example b whose norm ||g_b|| (over all tensors of that example) exceeds clip_norm is
    rescaled by clip_norm / (||g_b|| + clip_eps), so examples never influence each other; with
    clip_eps = 0 that is min(1, clip_norm / ||g_b||). Returns new tensors.
    """
    if cfg.clip_value is not None:
        grads = tuple(g.clamp(-cfg.clip_value, cfg.clip_value) for g in grads)
    if cfg.clip_norm is not None and grads:
        norm = per_example_norm(grads)  # (B,)
        scale = torch.where(norm > cfg.clip_norm, cfg.clip_norm / (norm + cfg.clip_eps), torch.ones_like(norm))
        grads = tuple(g * scale.reshape((-1,) + (1,) * (g.dim() - 1)) for g in grads)
    return grads


def init_state(params: Params, cfg: InnerOptimConfig) -> InnerState:
    """Fresh optimiser state for one WRITE (Adam is "stateless": new moments every write)."""
    return OPTIMIZERS[cfg.name].init(params, cfg)


def step(
    params: Params,
    grads: Params,
    state: InnerState,
    cfg: InnerOptimConfig,
    lr: float | None = None,
) -> tuple[Params, InnerState]:
    """One inner update: clip ``grads``, then apply ``cfg.name``; returns NEW params and state.

    Pure and out-of-place, so with grads from ``create_graph=True`` the result is differentiable
    w.r.t. the input params. ``lr`` overrides ``cfg.lr`` (e.g. a different step size at eval).
    """
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} grads for {len(params)} params")
    lr = cfg.lr if lr is None else lr
    _check_lr(lr)
    return OPTIMIZERS[cfg.name].update(params, clip_gradients(grads, cfg), state, cfg, lr)
