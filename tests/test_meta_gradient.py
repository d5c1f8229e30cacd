"""The meta-gradient through the WRITE steps: second order against finite differences, and how
`first` and `none` route gradients (the paper's section on meta-training)."""

from __future__ import annotations

import pytest
import torch
from conftest import kv_batch, tiny_model

from gradmem.core.memory import Memory


def read_loss(model, batch) -> torch.Tensor:
    memory = model.write(batch.context)
    return model.read(memory, batch.query, batch.target).loss


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_second_order_matches_finite_differences(optim):
    model = tiny_model(
        dtype=torch.float64,
        write={"steps": 2, "grad_mode": "second", "optim": {"name": optim, "lr": 0.5 if optim == "sgd" else 0.05}},
    )
    batch = kv_batch(n=2, pairs=1)
    weight = model.backbone.blocks[0].qkv.weight
    params = {"memory0": model.method.memory0, "qkv": weight, "write_head": model.method.write_head.weight}
    grads = torch.autograd.grad(read_loss(model, batch), list(params.values()))
    gen = torch.Generator().manual_seed(0)
    for (name, param), grad in zip(params.items(), grads):
        for _ in range(3):
            index = tuple(torch.randint(0, s, (1,), generator=gen).item() for s in param.shape)
            eps = 1e-6
            with torch.no_grad():
                param[index] += eps
            plus = read_loss(model, batch).item()
            with torch.no_grad():
                param[index] -= 2 * eps
            minus = read_loss(model, batch).item()
            with torch.no_grad():
                param[index] += eps
            numeric = (plus - minus) / (2 * eps)
            assert grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_first_order_drops_the_hessian_term_but_keeps_the_update_chain():
    second = tiny_model(dtype=torch.float64, write={"steps": 2, "grad_mode": "second"})
    first = tiny_model(dtype=torch.float64, write={"steps": 2, "grad_mode": "first"})
    batch = kv_batch(n=2, pairs=1)
    g_first = torch.autograd.grad(read_loss(first, batch), first.method.memory0)[0]
    g_second = torch.autograd.grad(read_loss(second, batch), second.method.memory0)[0]
    assert g_first.abs().sum() > 0  # READ reaches M0 through M_K = M0 - lr * sum(g_k)
    assert not torch.allclose(g_first, g_second)  # ... but without the Hessian term
    # first order: d M_K / d M0 is the identity, so dL/dM0 equals the READ gradient at M_K (summed over batch)
    memory = first.write(batch.context)
    prefix_grad = torch.autograd.grad(first.read(memory, batch.query, batch.target).loss, memory.prefix)[0]
    expected = (prefix_grad @ first.method.projection).sum(0)
    assert torch.allclose(g_first, expected, atol=1e-12)
    # the write head only learns through the inner gradient, which first order treats as constant
    loss = read_loss(first, batch)
    assert torch.autograd.grad(loss, first.method.write_head.weight, allow_unused=True)[0] is None


def test_none_detaches_memory_from_m0():
    model = tiny_model(write={"steps": 2, "grad_mode": "none"})
    loss = read_loss(model, kv_batch(n=2, pairs=1))
    assert torch.autograd.grad(loss, model.method.memory0, allow_unused=True)[0] is None


def test_second_order_on_last_k_steps_only():
    full = tiny_model(dtype=torch.float64, write={"steps": 3, "grad_mode": "second"})
    last1 = tiny_model(dtype=torch.float64, write={"steps": 3, "grad_mode": "second", "second_order_steps": 1})
    first = tiny_model(dtype=torch.float64, write={"steps": 3, "grad_mode": "first"})
    batch = kv_batch(n=2, pairs=1)
    g = [torch.autograd.grad(read_loss(m, batch), m.method.memory0)[0] for m in (full, last1, first)]
    assert not torch.allclose(g[1], g[0]) and not torch.allclose(g[1], g[2])
    # last-k = K is the full second order
    allk = tiny_model(dtype=torch.float64, write={"steps": 3, "grad_mode": "second", "second_order_steps": 3})
    assert torch.allclose(torch.autograd.grad(read_loss(allk, batch), allk.method.memory0)[0], g[0], atol=1e-12)


def test_last_k_second_order_equals_a_hand_built_graph():
    """K = 3 with second order on the last step only: steps 1-2 take their inner gradient as a
    constant (no graph), step 3 is differentiated; the same graph written out by hand gives the same
    meta-gradient for every parameter. (tests/test_reference_parity.py case iv checks it against the
    authors' code too.)"""
    model = tiny_model(
        dtype=torch.float64, write={"steps": 3, "grad_mode": "second", "second_order_steps": 1, "optim": {"lr": 0.5}}
    )
    batch = kv_batch(n=2, pairs=1)
    method, backbone = model.method, model.backbone
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(read_loss(model, batch), params, allow_unused=True)

    embeds = backbone.embed(batch.context.ids)
    memory = method.initial_params(len(batch))[0]
    for step in range(3):
        memory = memory if memory.requires_grad else memory.requires_grad_()
        loss = method.reconstruction_loss(backbone, method.prefix((memory,)), batch.context, embeds)
        (grad,) = torch.autograd.grad(loss.sum(), memory, create_graph=step == 2)
        memory = memory - 0.5 * grad  # steps 0 and 1: grad carries no graph, so dM/dM_prev = I
    prefix = method.prefix((memory,))
    by_hand = model.read(Memory(prefix), batch.query, batch.target).loss
    theirs = torch.autograd.grad(by_hand, params, allow_unused=True)
    for a, b in zip(ours, theirs):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
