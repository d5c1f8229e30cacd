"""Tests for the pure inner optimisers: agreement with torch.optim in float64, clipping, and
differentiability through the inner steps."""

from __future__ import annotations

import pytest
import torch

from gradmem.core.inner_optim import (
    OPTIMIZERS,
    InnerOptimConfig,
    InnerState,
    clip_gradients,
    init_state,
    per_example_norm,
    step,
)

B, N = 3, 4
DT = torch.float64


def _problem(seed: int = 0):
    """Seeded batched nonlinear problem: two param tensors (B, N) and (B, 2, 2)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(N, N, generator=g, dtype=DT)  # (N, N)
    b = torch.randn(B, N, generator=g, dtype=DT)  # (B, N)
    p0 = (torch.randn(B, N, generator=g, dtype=DT), torch.randn(B, 2, 2, generator=g, dtype=DT))

    def loss_fn(params):
        x, w = params
        r = x @ A.T - b  # (B, N)
        return (r**2).sum() + (x**4).sum() + ((w @ w - 0.5) ** 2).sum() + (x[:, :2] * w[:, 0]).sum()

    return p0, loss_fn


def _run_functional(cfg, p0, loss_fn, k, create_graph=False, lr=None):
    params, state = p0, init_state(p0, cfg)
    for _ in range(k):
        if not create_graph:
            params = tuple(p.detach().requires_grad_() for p in params)
        grads = torch.autograd.grad(loss_fn(params), params, create_graph=create_graph)
        params, state = step(params, grads, state, cfg, lr=lr)
    return params, state


def _run_torch(opt_cls, p0, loss_fn, k, grad_hook=None, **kw):
    params = [p.clone().requires_grad_() for p in p0]
    opt = opt_cls(params, **kw)
    for _ in range(k):
        opt.zero_grad()
        loss_fn(tuple(params)).backward()
        if grad_hook is not None:
            grad_hook(params)
        opt.step()
    return tuple(p.detach() for p in params)


def _assert_close(actual, expected, tol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e, rtol=0, atol=tol)


def test_unknown_optimiser_names_the_valid_ones():
    with pytest.raises(ValueError) as err:
        InnerOptimConfig(name="lion")
    for name in OPTIMIZERS:
        assert repr(name) in str(err.value)


def test_adam_reference_clamps_and_is_a_constant_step():
    """The reference code's Adam: gradients clamped to +-10, and the step carries no outer gradient."""
    cfg = InnerOptimConfig(name="adam_reference", lr=0.1)
    p = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)

    def two_steps(first: float, name: str = "adam_reference") -> tuple[torch.Tensor, ...]:
        c = InnerOptimConfig(name=name, lr=0.1)
        params, state = (p,), init_state((p,), c)
        for g in (first, 1.0):
            params, state = step(params, (torch.full_like(p, g) + 0 * p,), state, c)
        return params

    clamped = two_steps(1e3)
    torch.testing.assert_close(clamped[0], two_steps(10.0)[0], rtol=0, atol=0)  # 1000 is clamped to 10
    assert float((clamped[0] - two_steps(1e3, "adam")[0]).detach().abs().max()) > 1e-3  # plain Adam does not clamp
    new, _ = step((p,), (torch.ones_like(p) + p,), init_state((p,), cfg), cfg)
    (dp,) = torch.autograd.grad(new[0].sum(), p)
    torch.testing.assert_close(dp, torch.ones_like(p), rtol=0, atol=0)  # d(p - const)/dp = I
    with pytest.raises(ValueError, match="clamps its gradients itself"):
        InnerOptimConfig(name="adam_reference", clip_norm=1.0)


def test_clip_eps_scales_below_the_cap():
    grads = (torch.tensor([[3.0, 4.0]], dtype=torch.float64),)  # norm 5
    plain = clip_gradients(grads, InnerOptimConfig(clip_norm=1.0))[0]
    eps = clip_gradients(grads, InnerOptimConfig(clip_norm=1.0, clip_eps=1e-6))[0]
    torch.testing.assert_close(plain.norm(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-15, atol=0)
    torch.testing.assert_close(eps.norm(), torch.tensor(5 / (5 + 1e-6), dtype=torch.float64), rtol=1e-15, atol=0)


def test_sgd_matches_torch():
    p0, loss_fn = _problem()
    cfg = InnerOptimConfig(name="sgd", lr=0.01)
    ours, state = _run_functional(cfg, p0, loss_fn, k=5)
    _assert_close(ours, _run_torch(torch.optim.SGD, p0, loss_fn, 5, lr=0.01), 1e-12)
    assert state == InnerState(step=5)


def test_lr_override_matches_torch():
    p0, loss_fn = _problem(1)
    ours, _ = _run_functional(InnerOptimConfig(lr=0.4), p0, loss_fn, k=5, lr=0.003)
    _assert_close(ours, _run_torch(torch.optim.SGD, p0, loss_fn, 5, lr=0.003), 1e-12)


@pytest.mark.parametrize("betas,eps", [((0.9, 0.999), 1e-8), ((0.5, 0.9), 1e-3)])
def test_adam_matches_torch(betas, eps):
    p0, loss_fn = _problem(2)
    cfg = InnerOptimConfig(name="adam", lr=0.05, betas=betas, eps=eps)
    ours, state = _run_functional(cfg, p0, loss_fn, k=5)
    ref = _run_torch(torch.optim.Adam, p0, loss_fn, 5, lr=0.05, betas=betas, eps=eps)
    _assert_close(ours, ref, 1e-10)
    assert state.step == 5 and len(state.exp_avg) == len(state.exp_avg_sq) == 2


def test_adam_with_value_clip_matches_torch():
    p0, loss_fn = _problem(3)
    cfg = InnerOptimConfig(name="adam", lr=0.05, clip_value=2.0)

    def clamp_grads(params):
        for p in params:
            p.grad = p.grad.clamp(-2.0, 2.0)

    ours, _ = _run_functional(cfg, p0, loss_fn, k=5)
    ref = _run_torch(torch.optim.Adam, p0, loss_fn, 5, grad_hook=clamp_grads, lr=0.05)
    _assert_close(ours, ref, 1e-10)


def _grads(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, generator=g, dtype=DT)  # (B, N)
    w = torch.randn(B, 2, 3, generator=g, dtype=DT)  # (B, 2, 3)
    return scale * x, scale * w


def test_clip_value_is_clamp():
    grads = _grads(scale=3.0)
    out = clip_gradients(grads, InnerOptimConfig(clip_value=1.5))
    _assert_close(out, tuple(torch.clamp(g, -1.5, 1.5) for g in grads), 0.0)


def test_clip_norm_per_example():
    grads = _grads(scale=2.0)
    # Example 0 is small enough to stay unchanged; the others must be scaled down to the cap.
    grads = (grads[0].clone(), grads[1].clone())
    grads[0][0] *= 0.01
    grads[1][0] *= 0.01
    cap = 1.0
    norms_before = per_example_norm(grads)
    assert norms_before[0] < cap and (norms_before[1:] > cap).all()
    out = clip_gradients(grads, InnerOptimConfig(clip_norm=cap))
    norms_after = per_example_norm(out)
    assert (norms_after <= cap + 1e-12).all()
    torch.testing.assert_close(norms_after[1:], torch.full((B - 1,), cap, dtype=DT))
    _assert_close((out[0][0], out[1][0]), (grads[0][0], grads[1][0]), 0.0)
    # Directions are preserved.
    torch.testing.assert_close(out[0][1] / norms_after[1], grads[0][1] / norms_before[1])


def test_clip_norm_examples_independent():
    cfg = InnerOptimConfig(clip_value=1.0, clip_norm=0.5)
    grads = _grads(scale=2.0)
    changed = (grads[0].clone(), grads[1].clone())
    changed[0][1] *= 100.0
    changed[1][1] = 0.0
    a, b = clip_gradients(grads, cfg), clip_gradients(changed, cfg)
    _assert_close((a[0][0], a[1][0]), (b[0][0], b[1][0]), 0.0)
    _assert_close((a[0][2], a[1][2]), (b[0][2], b[1][2]), 0.0)


def _unrolled(cfg, k):
    """Map initial params -> params after k differentiable inner steps (for gradcheck)."""
    _, loss_fn = _problem()

    def f(x, w):
        out, _ = _run_functional(cfg, (x, w), loss_fn, k=k, create_graph=True)
        return out

    return f


@pytest.mark.parametrize(
    "cfg",
    [
        InnerOptimConfig(name="sgd", lr=0.01),
        InnerOptimConfig(name="sgd", lr=0.01, clip_norm=1.0),
        InnerOptimConfig(name="adam", lr=0.05),
    ],
    ids=["sgd", "sgd-clipnorm", "adam"],
)
def test_second_order_matches_finite_differences(cfg):
    # d(params after 2 steps)/d(initial params) contains the inner Hessian: gradcheck compares
    # it with central finite differences; gradgradcheck goes one order further.
    p0, _ = _problem()
    inputs = tuple(p.clone().requires_grad_() for p in p0)
    f = _unrolled(cfg, k=2)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    if cfg.name == "sgd":
        assert torch.autograd.gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_zero_gradient_stays_finite(name):
    # A zero gradient (exactly zero second moment, zero norm) must not give nan second-order grads.
    cfg = InnerOptimConfig(name=name, lr=0.1, clip_norm=1.0)
    p = torch.zeros(B, N, dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad((p**2).sum(), (p,), create_graph=True)  # exactly zero
    (new,), _ = step((p,), (g,), init_state((p,), cfg), cfg)
    (outer,) = torch.autograd.grad((new**2).sum() + new.sum(), (p,))
    assert torch.isfinite(outer).all()


@pytest.mark.parametrize(
    "cfg",
    [
        InnerOptimConfig(name="sgd", clip_value=0.5, clip_norm=0.3),
        InnerOptimConfig(name="adam", clip_norm=0.3),
    ],
)
def test_inputs_not_modified(cfg):
    params, grads = _grads(1), _grads(2, scale=3.0)
    _, state = step(params, grads, init_state(params, cfg), cfg)  # so Adam moments are non-zero
    snapshot = [t.clone() for t in (*params, *grads, *state.exp_avg, *state.exp_avg_sq)]
    versions = [t._version for t in (*params, *grads, *state.exp_avg, *state.exp_avg_sq)]
    new_params, new_state = step(params, grads, state, cfg)
    clip_gradients(grads, cfg)
    after = (*params, *grads, *state.exp_avg, *state.exp_avg_sq)
    _assert_close(after, snapshot, 0.0)
    assert [t._version for t in after] == versions
    assert new_state.step == state.step + 1
    assert all(n is not p for n, p in zip(new_params, params))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "lbfgs"},
        {"lr": 0.0},
        {"lr": -1.0},
        {"clip_value": 0.0},
        {"clip_norm": -1.0},
        {"betas": (0.9, 1.0)},
        {"eps": -1e-8},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        InnerOptimConfig(**kwargs)


def test_unknown_name_lists_valid():
    with pytest.raises(ValueError, match="adam.*sgd"):
        InnerOptimConfig(name="lbfgs")


def test_bad_step_arguments_raise():
    cfg = InnerOptimConfig()
    params = _grads()
    with pytest.raises(ValueError):
        step(params, params[:1], init_state(params, cfg), cfg)
    with pytest.raises(ValueError):
        step(params, params, init_state(params, cfg), cfg, lr=0.0)
