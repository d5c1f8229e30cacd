"""WRITE: K steps of gradient descent on per-example tensors, as one plain function.

The loss is handed in as a function of the tensors being written, so this loop knows nothing of
models, projections or heads. Whether a step builds a graph for the outer (meta) gradient is
decided in one place, `step_kind`, from the grad mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from gradmem.core.inner_optim import OPTIMIZERS, InnerOptimConfig, init_state, per_example_norm, step
from gradmem.core.memory import WriteStats

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


@dataclass(frozen=True)
class WriteOptions:
    """Per-call choices of a WRITE (the method's config holds the defaults)."""

    steps: int | None = None  # K for this call (test-time extrapolation); None = the config's
    lr: float | None = None  # inner step size for this call; None = the config's
    measure_final: bool = False  # also compute the loss after the last step (stats.final_loss)
    target_loss: float | None = None  # adaptive write: an example stops once its loss is <= this
    on_loss: Callable[[int, Tensor], None] | None = None  # sees each (B,) loss as it is computed

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")


class _Record:
    """What a WRITE keeps of its steps: detached losses and gradient norms for the stats, and,
    for a training loss that includes the WRITE loss, each step's mean loss in the outer graph."""

    def __init__(self, keep_graph: bool) -> None:
        self.keep_graph = keep_graph
        self.losses: list[Tensor] = []
        self.norms: list[Tensor] = []
        self.in_graph: list[Tensor] = []

    def add(self, loss: Tensor, grads: Params) -> None:
        self.losses.append(loss.detach())
        self.norms.append(per_example_norm(tuple(g.detach() for g in grads)))
        if self.keep_graph:
            self.in_graph.append(loss.mean())

    def stats(self, like: Tensor, final: Tensor | None, taken: Tensor) -> WriteStats:
        empty = like.new_zeros(0, like.shape[0])
        return WriteStats(
            losses=torch.stack(self.losses) if self.losses else empty,
            grad_norms=torch.stack(self.norms) if self.norms else empty,
            final_loss=final,
            graph_losses=torch.stack(self.in_graph) if self.in_graph else None,
            steps_taken=taken,
        )


class _AdaptiveStop:
    """`target_loss`: an example whose loss before a step is <= target is frozen for good, so it
    ends exactly as if written alone with the steps it took."""

    def __init__(self, target: float | None, like: Tensor) -> None:
        self.target = target
        self.active = torch.ones(like.shape[0], dtype=torch.bool, device=like.device)  # (B,) still writing
        self.taken = torch.zeros(like.shape[0], dtype=torch.long, device=like.device)  # (B,) steps applied

    def all_done(self, loss: Tensor) -> bool:
        if self.target is not None:
            self.active = self.active & (loss.detach() > self.target)
        return not bool(self.active.any())

    def apply(self, new: Params, old: Params) -> Params:
        self.taken = self.taken + self.active.long()
        if self.target is None:
            return new
        return tuple(torch.where(self.active.view((-1,) + (1,) * (p.dim() - 1)), n, p) for n, p in zip(new, old))


def _enter_step(params: Params, kind: StepKind) -> Params:
    """The tensors a step differentiates: cut from the outer graph for a detached step."""
    if kind == "detach":
        params = tuple(p.detach() for p in params)
    return tuple(p if p.requires_grad else p.requires_grad_() for p in params)


def write(
    loss_fn: LossFn,
    init: Params,
    cfg: WriteConfig,
    options: WriteOptions = WriteOptions(),
    keep_loss_graph: bool = False,
) -> tuple[Params, WriteStats]:
    """Run the WRITE loop from `init` (tensors with a leading batch dim) and return the written tensors.

    The loss must be a sum-separable (B,) vector: its sum is differentiated, so each example's
    gradient depends on that example only. Runs with gradients enabled even under `torch.no_grad()`;
    the outer graph is kept only if the caller had gradients enabled. `options` overrides steps
    and lr, asks for the final loss, an adaptive stop (`stats.steps_taken` counts each example's
    steps; the loop ends once every example is frozen) or a live view of the losses.

    `keep_loss_graph` keeps every step's loss in the outer graph (`stats.graph_losses`), for a
    training loss that includes the WRITE loss; steps that are not second order then retain their
    forward graph after taking the inner gradient, which costs memory, so it is off by default.
    """
    outer_grad = torch.is_grad_enabled()
    total = cfg.steps if options.steps is None else options.steps
    params, state = init, init_state(init, cfg.optim)
    record = _Record(keep_loss_graph and outer_grad)
    stop = _AdaptiveStop(options.target_loss, init[0])
    final = None
    with torch.enable_grad():
        for index in range(total):
            kind = step_kind(index, total, cfg, outer_grad)
            params = _enter_step(params, kind)
            loss = loss_fn(params)  # (B,)
            if options.on_loss is not None:
                options.on_loss(index, loss.detach())
            if stop.all_done(loss):  # every example reached the target: this is their final loss
                final = loss.detach()
                break
            grads = torch.autograd.grad(
                loss.sum(), params, create_graph=kind == "second", retain_graph=record.keep_graph or None
            )
            new_params, state = step(params, grads, state, cfg.optim, lr=options.lr)
            params = stop.apply(new_params, params)
            record.add(loss, grads)
        if options.measure_final and final is None:
            final = _final_loss(loss_fn, params, options.on_loss, len(record.losses))
    if not outer_grad:
        params = tuple(p.detach() for p in params)
    return params, record.stats(init[0], final, stop.taken)


def _final_loss(loss_fn: LossFn, params: Params, on_loss: Callable[[int, Tensor], None] | None, index: int) -> Tensor:
    with torch.no_grad():
        final = loss_fn(tuple(p.detach() for p in params)).detach()
    if on_loss is not None:
        on_loss(index, final)
    return final
