"""A compiled training step: the whole meta-gradient traced to one ATen graph and fused by Inductor.

Eager second-order meta-training spends a third of its time in small element-wise passes that
autograd creates for the inner gradient (create_graph) and again for its derivative. Autograd
cannot fuse them and `torch.compile` does not support double backward, so this module takes the
route AOTAutograd itself takes: `make_fx` runs one real training step (forward, K inner gradient
steps, READ, outer `torch.autograd.grad`) under a tracing mode that records every ATen op,
including those of both backward passes, into a plain forward-only graph whose outputs are the
loss and the parameter gradients. Inductor then compiles that graph like any inference graph and
fuses the element-wise chains into a few C++ (or Triton) kernels; the GEMMs stay BLAS calls.

What the graph depends on besides its tensor inputs is fixed at trace time: tensor shapes, the
batch's lengths (they decide padding widths through Python ints), the method's config (K, inner lr,
grad mode) and training mode. Those form the cache key; a batch with a new key is traced and
compiled again (a minute or more on a CPU), so this pays off for fixed-shape tasks such as
key-value retrieval, where every batch of one curriculum stage has the same key. The first call of
every graph is checked against the eager step. A graph that fails the check is never used: that
batch runs eagerly, the next batch of the signature is traced and checked again, and after
MAX_CHECK_FAILURES failures the signature stays eager for good (a custom method whose Python control
flow reads tensor values fails every time; under bf16 a rare batch is rounded apart honestly).
Each failure is a RuntimeWarning.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from gradmem.core.batch import Batch, TokenBatch
from gradmem.methods.model import MemoryModel

# Under bf16 autocast a correct compiled step still differs from the eager one, because fusion
# changes where bf16 rounds: by as much as eager bf16 differs from fp32 (2-5 % per gradient on the
# 16-pair recipe's trained model). The check then allows this multiple of that distance, measured on
# the same batch; a wrong graph (a value read in Python control flow) is off by O(1).
BF16_NOISE_FACTOR = 3.0
# A signature whose graph fails the check this many times runs eagerly for good. One bf16 batch of
# the K = 1 16-pair run was refused (a norm weight's gradient, 0.78 apart at a 0.65 allowance)
# where other batches of that model and shape are 0.01-0.15 apart: retrying is worth a recompile
# (seconds, from Inductor's cache); a wrong graph fails every time.
MAX_CHECK_FAILURES = 3
# Inductor keeps compiled kernels in /tmp by default, so a reboot costs every shape its compile
# again (minutes each on a CPU); gradmem keeps them here unless TORCHINDUCTOR_CACHE_DIR says otherwise.
INDUCTOR_CACHE = Path("~/.cache/gradmem/inductor")


def use_persistent_inductor_cache() -> str:
    """Point Inductor's on-disk cache at INDUCTOR_CACHE unless the environment (or an earlier
    compile in this process) already chose one; returns the directory in use."""
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE.expanduser()))


class CompiledStepMismatch(RuntimeError):
    """The compiled graph's loss or gradients differ from the eager step's on its first batch."""


def relative_error(reference: Tensor, other: Tensor) -> float:
    """||other - reference|| / ||reference||, inf if `other` is not finite."""
    if not torch.isfinite(other).all():
        return float("inf")
    return float((other - reference).norm() / reference.norm().clamp_min(1e-12))


@contextmanager
def without_bf16(model: MemoryModel) -> Iterator[bool]:
    """Inside: the backbone computes in fp32 even if its option `bf16` is on (or "auto" resolves to on
    for the model's device); yields whether it was."""
    device_type = next(model.parameters()).device.type
    if not model.backbone.uses_bf16(device_type):
        yield False
        return
    with model.backbone.full_precision():
        yield True


@dataclass
class StepResult:
    """Loss terms and gradients of one compiled training step (all detached)."""

    loss: Tensor  # scalar: what the eager step would call .backward() on
    read_loss: Tensor  # scalar: the READ part of the loss
    write_losses: Tensor | None  # (K, B) reconstruction loss before each write step, if the method writes by GD
    grads: list[Tensor]  # one per trainable parameter, in `CompiledStep.parameters` order

    def assign_grads(self, parameters: list[torch.nn.Parameter]) -> None:
        """Store the gradients in `.grad`, as `loss.backward()` would after zero_grad(set_to_none)."""
        for p, g in zip(parameters, self.grads):
            p.grad = g


class CompiledStep:
    """`step(batch) -> StepResult`: loss and gradients of `model(batch).loss`, compiled per batch signature."""

    def __init__(
        self,
        model: MemoryModel,
        max_graphs: int = 4,
        mode: str | None = None,
        backend: str = "inductor",
        check_tolerance: float = 1e-3,
        compile_after: int = 0,
        eager_fallback: bool = True,
    ) -> None:
        """max_graphs: compiled graphs kept at once (oldest dropped); mode, backend: passed to
        torch.compile, except backend "eager", which runs the traced graph as is (no compile; tests);
        check_tolerance: relative error (norm) allowed in the first-call comparison with the eager
        step; under bf16 autocast, at least BF16_NOISE_FACTOR times the eager bf16 step's own
        relative error against fp32 on that batch;
        compile_after: calls with a batch signature before it is compiled (until then the call
        returns None and the caller runs the eager step): a compile costs a minute or more on a
        CPU, which only a signature that stays in use for hundreds of steps pays back;
        eager_fallback: a graph that fails the check leaves that batch (and, after
        MAX_CHECK_FAILURES, its signature) to the eager step; False: the failure raises
        (data-parallel processes must all take the same path, compiled or eager)."""
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model = model
        self.max_graphs = max_graphs
        self.mode = mode
        self.backend = backend
        self.check_tolerance = check_tolerance
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        self._graphs: dict[tuple, Callable[..., Any]] = {}
        self.compile_after = compile_after
        self.eager_fallback = eager_fallback
        self._seen: dict[tuple, int] = {}  # calls per signature not yet compiled
        self._failures: dict[tuple, int] = {}  # failed first-call checks per signature
        self.compiles = 0  # graphs traced and compiled so far (a recompilation counter for logs)

    def __call__(self, batch: Batch) -> StepResult | None:
        """The step's loss and gradients, or None (the caller then runs the eager step) while
        `batch`'s signature has been seen fewer than `compile_after` times, when its new graph failed
        the check, and for good once it failed MAX_CHECK_FAILURES times."""
        key = self._key(batch)
        fn = self._graphs.get(key)
        if fn is None:
            if self._failures.get(key, 0) >= MAX_CHECK_FAILURES:
                return None
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] <= self.compile_after:
                return None
            del self._seen[key]
            try:
                fn = self._compile(batch)
            except CompiledStepMismatch as err:
                if not self.eager_fallback:
                    raise
                self._failures[key] = failures = self._failures.get(key, 0) + 1
                self._seen[key] = self.compile_after  # the retry is the next call, whatever compile_after says
                then = "runs eagerly from now on" if failures >= MAX_CHECK_FAILURES else "is traced again next call"
                warnings.warn(
                    f"{err}; check {failures} of {MAX_CHECK_FAILURES} failed: this batch runs eagerly, "
                    f"this batch signature {then}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                return None
            self._graphs[key] = fn
            if len(self._graphs) > self.max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
        with torch.no_grad():  # the graph computes its gradients itself; always no_grad, so Dynamo keeps one variant
            return self._unpack(fn(self._state(), batch.context.ids, batch.query.ids, batch.target.ids))

    # -- internals ------------------------------------------------------------------------------
    def _key(self, batch: Batch) -> tuple:
        tokens = (batch.context, batch.query, batch.target)
        method_config = self.model.method.export_config()
        return (
            tuple(tuple(t.ids.shape) for t in tokens),
            tuple(tuple(t.lengths.tolist()) for t in tokens),
            tuple(batch.answer_len.tolist()),
            batch.context.ids.device,
            self.model.training,
            json.dumps(method_config, sort_keys=True, default=str),
        )

    def _state(self) -> dict[str, Tensor]:
        """Every parameter and buffer, detached: the graph's weight inputs."""
        state = {n: p.detach() for n, p in self.model.named_parameters()}
        state.update({n: b for n, b in self.model.named_buffers()})
        return state

    def _step_function(self, batch: Batch) -> Callable[..., tuple]:
        """The function traced: (state, token ids) -> (loss, read loss, write losses, grads).

        Lengths are closed over rather than passed: they fix padding widths (Python ints) and are
        part of the cache key, so the graph is only ever called with the lengths it was traced with.
        """
        lengths = (batch.context.lengths, batch.query.lengths, batch.target.lengths, batch.answer_len)
        names = set(self._names)

        def step(state: dict[str, Tensor], context: Tensor, query: Tensor, target: Tensor) -> tuple:
            b = Batch(
                TokenBatch(context, lengths[0]),
                TokenBatch(query, lengths[1]),
                TokenBatch(target, lengths[2]),
                lengths[3],
            )
            params = {n: (t.requires_grad_(True) if n in names else t) for n, t in state.items()}
            out = functional_call(self.model, params, (b,))
            grads = torch.autograd.grad(out.loss, [params[n] for n in self._names], allow_unused=True)
            grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(self._names, grads)]
            stats = out.memory.stats
            write_losses = stats.losses.detach() if stats is not None else None
            return out.loss.detach(), out.read.loss.detach(), write_losses, [g.detach() for g in grads]

        return step

    def _compile(self, batch: Batch) -> Callable[..., Any]:
        from torch.fx.experimental.proxy_tensor import make_fx

        step = self._step_function(batch)
        ids = (batch.context.ids, batch.query.ids, batch.target.ids)
        if self.backend != "eager":
            use_persistent_inductor_cache()
        trace_state = self._fresh_state()
        # Real-tensor tracing lets Python ints read from the closed-over lengths be baked in.
        graph = make_fx(step, _error_on_data_dependent_ops=False)(trace_state, *ids)
        compiled = (
            graph
            if self.backend == "eager"
            else torch.compile(graph, dynamic=False, mode=self.mode, backend=self.backend)
        )
        self.compiles += 1
        self._check(compiled, step, ids)
        return compiled

    def _check(self, compiled: Callable[..., Any], step: Callable[..., tuple], ids: tuple[Tensor, ...]) -> None:
        """Compare the compiled graph with the eager step on the batch it was traced from."""
        eager = _outputs(step(self._fresh_state(), *ids))
        with torch.no_grad():
            fast = _outputs(compiled(self._state(), *ids))
        tolerance = self.check_tolerance
        with without_bf16(self.model) as was_bf16:
            if was_bf16:  # how far bf16 itself moves this step: the scale of an honest disagreement
                fp32 = _outputs(step(self._fresh_state(), *ids))
                noise = max(relative_error(a, b) for a, b in zip(fp32, eager))
                tolerance = max(tolerance, BF16_NOISE_FACTOR * noise)
        for i, (a, b) in enumerate(zip(eager, fast)):
            error = relative_error(a, b)
            if error > tolerance:
                raise CompiledStepMismatch(
                    f"the compiled step disagrees with the eager step (output {i}: relative error {error:.2g} "
                    f"> {tolerance:.2g}); if every check fails, the method probably reads tensor values "
                    "in Python control flow"
                )

    def _fresh_state(self) -> dict[str, Tensor]:
        return {n: t.detach().clone() for n, t in self._state().items()}

    @staticmethod
    def _unpack(out: tuple) -> StepResult:
        loss, read_loss, write_losses, grads = out
        return StepResult(loss, read_loss, write_losses, list(grads))


def _outputs(result: tuple) -> list[Tensor]:
    """What the first-call check compares: loss, READ loss and every gradient."""
    loss, read_loss, _, grads = result
    return [loss, read_loss, *grads]
