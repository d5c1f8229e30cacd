"""WRITE: K steps of gradient descent on per-example tensors, as one plain function.

The loss is handed in as a function of the tensors being written, so this loop knows nothing of
models, projections or heads. Whether a step builds a graph for the outer (meta) gradient is
decided in one place, `step_kind`, from the grad mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from gradmem.inner_optim import OPTIMIZERS, InnerOptimConfig, init_state, per_example_norm, step
from gradmem.memory import WriteStats

Params = tuple[Tensor, ...]
LossFn = Callable[[Params], Tensor]  # written tensors -> (B,) per-example loss
GRAD_MODES = ("none", "first", "second")
StepKind = Literal["second", "first", "detach"]


@dataclass(frozen=True)
class WriteConfig:
    """How memory is written: steps, inner optimiser and how the outer gradient flows."""

    steps: int = 2  # K, inner gradient steps (may be overridden at evaluation time)
    grad_mode: str = "second"  # "second": full meta-gradient; "first": no Hessian term; "none": memory detached
    second_order_steps: int | None = None  # with "second": only the last k steps are second order; None = all
    optim: InnerOptimConfig = field(default_factory=InnerOptimConfig)  # inner optimiser (lr, clipping)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"unknown grad_mode {self.grad_mode!r}; valid: {list(GRAD_MODES)}")
        if self.second_order_steps is not None and self.second_order_steps < 0:
            raise ValueError(f"second_order_steps must be >= 0 or None, got {self.second_order_steps}")
        if isinstance(self.optim, dict):  # built from JSON
            object.__setattr__(self, "optim", InnerOptimConfig(**self.optim))


def step_kind(index: int, total: int, cfg: WriteConfig, outer_grad: bool) -> StepKind:
    """How inner step `index` of `total` connects to the outer gradient.

    second: the inner gradient is itself differentiated (create_graph); first: the update chain
    M_{k+1} = M_k - lr * g_k stays in the graph but g_k is a constant; detach: the step is cut from
    the graph (grad mode "none", or no outer gradient wanted, e.g. evaluation). An optimiser whose
    update is not differentiable (``adam_reference``) makes every step first order.
    """
    if not outer_grad or cfg.grad_mode == "none":
        return "detach"
    if cfg.grad_mode == "first" or not OPTIMIZERS[cfg.optim.name].differentiable:
        return "first"
    k = cfg.second_order_steps
    return "second" if k is None or index >= total - k else "first"


def write(
    loss_fn: LossFn,
    init: Params,
    cfg: WriteConfig,
    steps: int | None = None,
    lr: float | None = None,
    measure_final: bool = False,
    target_loss: float | None = None,
    on_loss: Callable[[int, Tensor], None] | None = None,
    keep_loss_graph: bool = False,
) -> tuple[Params, WriteStats]:
    """Run the WRITE loop from `init` (tensors with a leading batch dim) and return the written tensors.

    `steps` and `lr` override the config (test-time extrapolation). The loss must be a sum-separable
    (B,) vector: its sum is differentiated, so each example's gradient depends on that example only.
    Runs with gradients enabled even under `torch.no_grad()`; the outer graph is kept only if the
    caller had gradients enabled.

    Adaptive writes: with `target_loss`, an example whose loss before a step is <= target is frozen
    for good (its tensors stop changing), so it ends exactly as if written alone with the steps it
    took; the loop stops early once every example is frozen. `stats.steps_taken` counts them.

    `on_loss(i, loss)` sees each (B,) loss as it is computed (before step i, and after the last
    step when measured), e.g. to show a write's progress live.

    `keep_loss_graph` keeps every step's loss in the outer graph (`stats.graph_losses`), for a
    training loss that includes the WRITE loss; steps that are not second order then retain their
    forward graph after taking the inner gradient, which costs memory, so it is off by default.
    """
    outer_grad = torch.is_grad_enabled()
    total = cfg.steps if steps is None else steps
    if total < 0:
        raise ValueError(f"steps must be >= 0, got {total}")
    params = init
    state = init_state(params, cfg.optim)
    losses: list[Tensor] = []
    norms: list[Tensor] = []
    in_graph: list[Tensor] = []
    active = torch.ones(init[0].shape[0], dtype=torch.bool, device=init[0].device)  # (B,) still writing
    taken = torch.zeros(init[0].shape[0], dtype=torch.long, device=init[0].device)  # (B,) steps applied
    final = None
    with torch.enable_grad():
        for index in range(total):
            kind = step_kind(index, total, cfg, outer_grad)
            if kind == "detach":
                params = tuple(p.detach() for p in params)
            params = tuple(p if p.requires_grad else p.requires_grad_() for p in params)
            loss = loss_fn(params)  # (B,)
            if on_loss is not None:
                on_loss(index, loss.detach())
            if target_loss is not None:
                active = active & (loss.detach() > target_loss)
                if not bool(active.any()):  # every example reached the target: loss is their final loss
                    final = loss.detach()
                    break
            keep = keep_loss_graph and outer_grad
            grads = torch.autograd.grad(loss.sum(), params, create_graph=kind == "second", retain_graph=keep or None)
            new_params, state = step(params, grads, state, cfg.optim, lr=lr)
            params = tuple(torch.where(active.view((-1,) + (1,) * (p.dim() - 1)), n, p)
                           for n, p in zip(new_params, params)) if target_loss is not None else new_params
            taken = taken + active.long()
            if keep:
                in_graph.append(loss.mean())
            losses.append(loss.detach())
            norms.append(per_example_norm(tuple(g.detach() for g in grads)))
        if measure_final and final is None:
            with torch.no_grad():
                final = loss_fn(tuple(p.detach() for p in params)).detach()
            if on_loss is not None:
                on_loss(len(losses), final)
    if not outer_grad:
        params = tuple(p.detach() for p in params)
    batch = init[0].shape[0]
    stats = WriteStats(
        losses=torch.stack(losses) if losses else init[0].new_zeros(0, batch),
        grad_norms=torch.stack(norms) if norms else init[0].new_zeros(0, batch),
        final_loss=final,
        graph_losses=torch.stack(in_graph) if in_graph else None,
        steps_taken=taken,
    )
    return params, stats
