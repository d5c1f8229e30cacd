"""The compiled training step: traced meta-gradients equal eager autograd, one graph per batch signature.

These tests use backend "eager", which runs the traced graph without compiling it: what they check is gradmem's part (the trace of forward + inner steps + outer gradient, the
cache key, the first-call check, the Trainer wiring). Inductor's code generation takes minutes on
this CPU; every real compile is still checked against the eager step on its first call, and
benchmarks/throughput.py runs it (variants *_compiled).
"""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from conftest import kv_batch, tiny_model, tiny_run_spec

from gradmem.run.build import build_model
from gradmem.training.compiled import (
    INDUCTOR_CACHE,
    MAX_CHECK_FAILURES,
    CompiledStep,
    CompiledStepMismatch,
    relative_error,
    use_persistent_inductor_cache,
    without_bf16,
)
from gradmem.training.trainer import Trainer


def eager_gradients(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(batch).loss
    loss.backward()
    return loss.detach(), [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters() if p.requires_grad
    ]


@pytest.mark.parametrize(
    "method, cfg",
    [
        ("gradmem", {"write": {"steps": 2, "grad_mode": "second"}}),
        ("gradmem", {"projection": "fast", "write": {"steps": 1, "grad_mode": "first"}}),
        ("rmt", {"num_memory": 2, "steps": 2}),
        ("full_context", {}),
        ("ttt_linear", {"num_heads": 2, "steps": 2}),
        ("lact", {"num_heads": 2, "muon": True}),
        ("kv_prefix", {"num_memory": 2, "write": {"steps": 2}}),
    ],
)
def test_compiled_step_equals_eager_autograd_in_float64(method, cfg):
    model = tiny_model(method, dtype=torch.float64, **cfg)
    batch = kv_batch()
    step = CompiledStep(model, backend="eager")
    result = step(batch)
    loss, grads = eager_gradients(model, batch)
    assert result.loss.item() == pytest.approx(loss.item(), rel=1e-12)
    assert len(result.grads) == len(grads)
    for fast, ref in zip(result.grads, grads):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    if method == "gradmem":
        assert result.write_losses.shape == (model.method.config.write.steps, len(batch))


def test_one_graph_per_batch_signature_and_weights_are_inputs():
    model = tiny_model(dtype=torch.float64, write={"steps": 1})
    step = CompiledStep(model, backend="eager")
    step(kv_batch(seed=0))
    # same shapes and lengths, other tokens and updated weights: the same graph, still exact
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other = kv_batch(seed=1)
    result = step(other)
    assert step.compiles == 1
    for fast, ref in zip(result.grads, eager_gradients(model, other)[1]):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
    step(kv_batch(pairs=3))  # longer contexts: traced again
    cfg = model.method.config  # a different K changes the graph too
    model.method.config = replace(cfg, write=replace(cfg.write, steps=2))
    step(kv_batch(seed=0))
    assert step.compiles == 3


def test_a_graph_that_disagrees_with_eager_is_refused():
    model = tiny_model(write={"steps": 1})
    step = CompiledStep(model, backend="eager")
    batch = kv_batch()
    real = step._step_function(batch)
    ids = (batch.context.ids, batch.query.ids, batch.target.ids)

    state = {n: t.detach().clone() for n, t in step._state().items()}
    loss, read_loss, write_losses, grads = real(state, *ids)

    def wrong(state, *args):  # stands in for a graph that baked in a value it should have read
        return loss, read_loss, write_losses, [g + 1.0 for g in grads]

    with pytest.raises(RuntimeError, match="disagrees with the eager step"):
        step._check(wrong, real, ids)
    with pytest.raises(ValueError, match="max_graphs"):
        CompiledStep(model, max_graphs=0)


def test_a_failed_check_leaves_the_batch_to_eager_then_retries(monkeypatch):
    # a check that fails twice, then passes: the first two batches return None (the caller runs
    # them eagerly), the third is traced again and used from then on
    step = CompiledStep(tiny_model(write={"steps": 1}), backend="eager")
    verdicts = iter([False, False, True])

    def check(compiled, real, ids):
        if not next(verdicts):
            raise CompiledStepMismatch("the compiled step disagrees with the eager step (stand-in)")

    monkeypatch.setattr(step, "_check", check)
    batch = kv_batch()
    for attempt in (1, 2):
        with pytest.warns(RuntimeWarning, match=f"check {attempt} of {MAX_CHECK_FAILURES} failed"):
            assert step(batch) is None
    result = step(batch)
    assert step.compiles == 3 and result is not None
    for fast, ref in zip(result.grads, eager_gradients(step.model, batch)[1]):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_a_signature_that_always_fails_stays_eager_and_no_fallback_raises(monkeypatch):
    def failing(compiled, real, ids):
        raise CompiledStepMismatch("the compiled step disagrees with the eager step (stand-in)")

    step = CompiledStep(tiny_model(write={"steps": 1}), backend="eager")
    monkeypatch.setattr(step, "_check", failing)
    batch = kv_batch()
    with pytest.warns(RuntimeWarning):
        for _ in range(MAX_CHECK_FAILURES):
            assert step(batch) is None
    assert step(batch) is None and step(batch) is None  # no more tracing once given up
    assert step.compiles == MAX_CHECK_FAILURES
    strict = CompiledStep(tiny_model(write={"steps": 1}), backend="eager", eager_fallback=False)
    monkeypatch.setattr(strict, "_check", failing)
    with pytest.raises(CompiledStepMismatch, match="disagrees"):
        strict(batch)


@pytest.mark.parametrize("bf16", [False, True])
def test_the_first_call_check_allows_bf16_rounding_but_not_a_wrong_graph(bf16):
    # Inductor fuses bf16 ops differently from eager, so a correct compiled bf16 step differs from
    # the eager one about as much as eager bf16 differs from fp32 (2-5 % on the 16-pair recipe's
    # trained model); the check measures that distance and allows a multiple of it. fp32: 1e-3.
    spec = tiny_run_spec(steps=1)
    spec["backbone"]["bf16"] = bf16
    step = CompiledStep(build_model(spec), backend="eager")
    batch = kv_batch()
    real = step._step_function(batch)
    ids = (batch.context.ids, batch.query.ids, batch.target.ids)
    loss, read_loss, write_losses, grads = real(step._fresh_state(), *ids)

    def off_by(rel: float, shift: float = 0.0):
        return lambda state, *args: (loss, read_loss, write_losses, [g * (1 + rel) + shift for g in grads])

    with without_bf16(step.model):
        fp32_grads = real(step._fresh_state(), *ids)[3]
    noise = max(relative_error(a, b) for a, b in zip(fp32_grads, grads))
    assert (noise > 1e-3) == bf16  # bf16 moves the gradients by more than fp32's tolerance
    if bf16:
        step._check(off_by(noise), real, ids)
    else:
        with pytest.raises(RuntimeError, match="disagrees"):
            step._check(off_by(0.02), real, ids)
    with pytest.raises(RuntimeError, match="disagrees"):
        step._check(off_by(0.0, shift=1.0), real, ids)


def test_trainer_with_compile_matches_eager_training(tmp_path):
    spec = tiny_run_spec(steps=3, batch_size=4, warmup_steps=1, eval_every=4, eval_examples=8, log_every=1, seed=1)
    runs = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        run_spec = {**spec, "train": {**spec["train"], "compile": compiled, "compile_backend": "eager"}}
        trainer = Trainer.from_spec(build_model(run_spec), run_spec, tmp_path / str(compiled))
        trainer.train()
        runs[compiled] = trainer
    eager, fast = runs[False], runs[True]
    assert [r["loss"] for r in fast.history if r["kind"] == "train"] == pytest.approx(
        [r["loss"] for r in eager.history if r["kind"] == "train"], rel=1e-5
    )
    assert len(fast.history[0]["write_loss"]) == 1
    for a, b in zip(eager.model.parameters(), fast.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_after_runs_a_signature_eagerly_until_it_has_lasted():
    model = tiny_model(dtype=torch.float64, write={"steps": 1})
    step = CompiledStep(model, backend="eager", compile_after=2)
    short = kv_batch(pairs=3)  # a signature seen once, like a stage that ends early: never compiled
    assert step(short) is None
    assert step(kv_batch(seed=0)) is None and step(kv_batch(seed=1)) is None  # eager twice...
    result = step(kv_batch(seed=2))  # ...then compiled, and exact
    assert result is not None and step.compiles == 1
    for fast, ref in zip(result.grads, eager_gradients(model, kv_batch(seed=2))[1]):
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_trainer_with_compile_after_matches_eager_training(tmp_path):
    spec = tiny_run_spec(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_examples=8, log_every=1, seed=1)
    losses = {}
    for after in (None, 2):
        torch.manual_seed(0)
        train = {**spec["train"], "compile": after is not None, "compile_backend": "eager", "compile_after": after or 0}
        trainer = Trainer.from_spec(
            build_model({**spec, "train": train}), {**spec, "train": train}, tmp_path / str(after)
        )
        trainer.train()
        losses[after] = [r["loss"] for r in trainer.history if r["kind"] == "train"]
        if after:
            assert trainer._compiled.compiles == 1  # steps 1-2 eager, 3-4 compiled
    assert losses[2] == pytest.approx(losses[None], rel=1e-5)


def test_compile_stages_last_compiles_only_the_last_curriculum_stage(tmp_path):
    # stage 1 (1 pair) lasts 2 fixed steps and stays eager; the last stage is compiled from its first step
    spec = tiny_run_spec(steps=4, batch_size=4, warmup_steps=1, eval_every=4, eval_examples=8, log_every=1, seed=1)
    train = {
        **spec["train"],
        "curriculum": [{"num_pairs": 1}, {}],
        "stage_steps": [2],
        "compile": True,
        "compile_backend": "eager",
        "compile_stages": "last",
    }
    trainer = Trainer.from_spec(build_model({**spec, "train": train}), {**spec, "train": train}, tmp_path)
    trainer.train()
    assert trainer.step == 4 and trainer.stage == 1
    assert trainer._compiled.compiles == 1
    (context_shape, _, _), *_ = next(iter(trainer._compiled._graphs))  # the one graph: the last stage's
    assert context_shape[1] > 7 * 1 + 1  # longer than a 1-pair context (7N + 1 tokens): the 2-pair stage


def test_compiled_kernels_are_kept_outside_tmp_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "-")  # recorded first, so teardown restores the real state
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    seen = []
    # an Inductor compile (stood in for by the identity: real code generation takes minutes here)
    # sees gradmem's cache directory, set before torch.compile is called
    monkeypatch.setattr(
        torch, "compile", lambda graph, **kw: seen.append(os.environ.get("TORCHINDUCTOR_CACHE_DIR")) or graph
    )
    CompiledStep(tiny_model(write={"steps": 1}), backend="inductor")(kv_batch())
    assert seen == [str(INDUCTOR_CACHE.expanduser())]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    assert use_persistent_inductor_cache() == str(tmp_path)


def test_with_compile_after_a_failed_check_is_retried_on_the_next_call(monkeypatch):
    step = CompiledStep(tiny_model(write={"steps": 1}), backend="eager", compile_after=5)
    verdicts = iter([False, True])

    def check(compiled, real, ids):
        if not next(verdicts):
            raise CompiledStepMismatch("the compiled step disagrees with the eager step (stand-in)")

    monkeypatch.setattr(step, "_check", check)
    batch = kv_batch()
    assert [step(batch) for _ in range(5)] == [None] * 5 and step.compiles == 0  # eager while warming up
    with pytest.warns(RuntimeWarning):
        assert step(batch) is None
    assert step(batch) is not None and step.compiles == 2
