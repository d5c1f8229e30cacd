"""TTT-Linear, LaCT and the per-layer KV memory: their inner updates against hand-computed and
autograd references in float64, the paper's state sizes, the KV splice against the backbone's own
keys and values, the meta-gradient through the write against finite differences, and a tiny
training whose loss falls for each."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY, kv_batch, tiny_model
from torch import nn

from gradmem.backbones import LlamaBackbone, LlamaConfig
from gradmem.methods import build_method
from gradmem.methods.fast_weights import mapped_layer_inputs
from gradmem.methods.lact import lact_descent, lact_update, newton_schulz, swiglu
from gradmem.methods.model import MemoryModel
from gradmem.methods.ttt_linear import LN_EPS, head_layer_norm, ttt_linear_step


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def hand_ttt_step(w, b, gamma, beta, keys, values, eta):
    """One TTT-Linear step written out scalar by scalar: every token's gradient at the old (w, b)."""
    w_new, b_new = w.clone(), b.clone()
    batch, heads, tokens, dh = keys.shape
    for n in range(batch):
        for h in range(heads):
            for t in range(tokens):
                k, v = keys[n, h, t].tolist(), values[n, h, t].tolist()
                z = [sum(k[i] * float(w[n, h, i, j]) for i in range(dh)) + float(b[n, h, j]) for j in range(dh)]
                mean = sum(z) / dh
                s = math.sqrt(sum((zj - mean) ** 2 for zj in z) / dh + LN_EPS)
                x_hat = [(zj - mean) / s for zj in z]
                y = [float(gamma[h, j]) * x_hat[j] + float(beta[h, j]) for j in range(dh)]
                # l = 1/2 ||k + y - v||^2, so dl/dy = y - (v - k); through gamma and the normalisation:
                g = [float(gamma[h, j]) * (y[j] - (v[j] - k[j])) for j in range(dh)]
                g_mean = sum(g) / dh
                gx_mean = sum(gj * xj for gj, xj in zip(g, x_hat)) / dh
                dz = [(g[j] - g_mean - x_hat[j] * gx_mean) / s for j in range(dh)]
                step = float(eta[n, h, t])
                for j in range(dh):
                    b_new[n, h, j] -= step * dz[j]
                    for i in range(dh):
                        w_new[n, h, i, j] -= step * k[i] * dz[j]
    return w_new, b_new


def ttt_inputs(batch=2, heads=2, tokens=3, dh=4):
    w, b = randn(batch, heads, dh, dh, seed=0) * 0.5, randn(batch, heads, dh, seed=1) * 0.1
    gamma, beta = 1 + 0.1 * randn(heads, dh, seed=2), 0.1 * randn(heads, dh, seed=3)
    keys, values = randn(batch, heads, tokens, dh, seed=4), randn(batch, heads, tokens, dh, seed=5)
    eta = torch.rand(batch, heads, tokens, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    eta[1, :, -1] = 0  # a pad: no step from it
    return w, b, gamma, beta, keys, values, eta


def test_ttt_linear_step_matches_the_hand_computed_update():
    args = ttt_inputs()
    got = ttt_linear_step(*args)
    want = hand_ttt_step(*args)
    for x, y in zip(got, want):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12)


def test_ttt_linear_step_is_a_gradient_step_on_the_reconstruction_loss():
    w, b, gamma, beta, keys, values, eta = ttt_inputs()
    w0, b0 = w.clone().requires_grad_(), b.clone().requires_grad_()
    f = keys + head_layer_norm(keys @ w0 + b0[:, :, None], gamma, beta, LN_EPS)
    loss = (eta * 0.5 * (f - values).pow(2).sum(-1)).sum()
    gw, gb = torch.autograd.grad(loss, (w0, b0))
    got_w, got_b = ttt_linear_step(w, b, gamma, beta, keys, values, eta)
    assert torch.allclose(got_w, w - gw, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got_b, b - gb, rtol=1e-12, atol=1e-12)


def test_lact_descent_is_minus_the_gradient_of_the_dot_product_loss():
    batch, heads, tokens, dh, dm = 2, 2, 5, 3, 4
    weights = (
        randn(batch, heads, dm, dh, seed=0),
        randn(batch, heads, dh, dm, seed=1),
        randn(batch, heads, dm, dh, seed=2),
    )
    keys, values = randn(batch, heads, tokens, dh, seed=3), randn(batch, heads, tokens, dh, seed=4)
    lrs = tuple(
        torch.rand(batch, heads, tokens, generator=torch.Generator().manual_seed(5 + i), dtype=torch.float64)
        for i in range(3)
    )
    leaves = tuple(w.clone().requires_grad_() for w in weights)
    loss = 0
    for i, lr in enumerate(lrs):  # lr_i weighs the loss only for weight i: differentiate each separately
        out = swiglu(tuple(w if j == i else w.detach() for j, w in enumerate(leaves)), keys)
        loss = loss - (lr[..., None] * out * values).sum()
    grads = torch.autograd.grad(loss, leaves)
    for got, grad in zip(lact_descent(weights, keys, values, lrs), grads):
        assert torch.allclose(got, -grad, rtol=1e-12, atol=1e-12)


def test_lact_update_keeps_every_row_norm_and_muon_orthogonalises():
    w = (randn(3, 2, 4, 6, seed=0),)
    d = (randn(3, 2, 4, 6, seed=1),)
    norms = (randn(3, 2, 4, 1, seed=2).abs() + 0.5,)
    for muon in (False, True):
        (new,) = lact_update(w, d, norms, muon)
        assert torch.allclose(new.norm(dim=-1, keepdim=True), norms[0], rtol=1e-4)
    singular = torch.linalg.svdvals(newton_schulz(d[0]))
    assert singular.min() > 0.6 and singular.max() < 1.25  # Muon's approximate orthogonalisation
    tall = newton_schulz(d[0].transpose(-1, -2))
    assert torch.allclose(tall, newton_schulz(d[0]).transpose(-1, -2), atol=1e-10)


def paper_model(method: dict) -> MemoryModel:
    backbone = LlamaBackbone(LlamaConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512))
    return MemoryModel(backbone, build_method(method.pop("name"), backbone, method))


def test_state_sizes_are_the_papers_at_4_layers_x_128():
    """Appendix H: TTT-Linear 16,896, LaCT 49,152 floats; appendix J: KV 1 token 1,024, 8 tokens 8,192."""
    cases = [
        ({"name": "ttt_linear"}, 16_896),
        ({"name": "lact"}, 49_152),
        ({"name": "kv_prefix", "num_memory": 1}, 1_024),
        ({"name": "kv_prefix", "num_memory": 8}, 8_192),
        ({"name": "gradmem", "num_memory": 8}, 1_024),
    ]
    for method, floats in cases:
        model = paper_model(dict(method))
        assert model.method.state_floats(model.backbone, 113) == floats, method
        if method["name"] != "gradmem":
            context = kv_batch(n=1, pairs=2).context
            with torch.no_grad():
                memory = model.write(context)
            stored = sum(t[0].numel() for layer in memory.layer_states for t in layer)
            assert stored == floats  # the report is what the memory holds


@pytest.mark.parametrize("name", ["ttt_linear", "lact"])
def test_zero_steps_leave_the_initial_fast_weights_and_hooks_are_removed(name):
    model = tiny_model(name, num_heads=2)
    batch = kv_batch(n=2, pairs=2)
    with torch.no_grad():
        memory = model.write(batch.context, steps=0)
        written = model.write(batch.context)
    for cell, layer in zip(model.method.cells, memory.layer_states):
        for got, want in zip(layer, cell.initial_state(2)):
            assert torch.equal(got, want)
    assert not torch.allclose(written.layer_states[0][0], memory.layer_states[0][0])
    for layer in model.backbone.decoder_layers():
        assert not layer._forward_pre_hooks
    with pytest.raises(ValueError, match="fast weights"):
        with model.reading(tiny_model("armt", num_memory=2, key_size=3).write(batch.context)):
            pass


def test_kv_splice_reproduces_the_backbones_own_keys_and_values():
    """A KV memory holding the keys and values the backbone computes for a real prefix X makes the
    query tokens' hidden states exactly those of [X; Q]."""
    torch.manual_seed(0)
    model = tiny_model("kv_prefix", dtype=torch.float64, num_memory=3)
    backbone, method = model.backbone, model.method
    x, q = torch.randint(4, 70, (2, 3)), torch.randint(4, 70, (2, 5))
    captured = []
    d = TINY["hidden_size"]
    handles = [
        block.qkv.register_forward_hook(lambda m, a, out: captured.append(out[:, :3, d:])) for block in backbone.blocks
    ]
    with torch.no_grad():
        full = backbone.hidden(backbone.embed(torch.cat((x, q), 1)))[:, 3:]
        for handle in handles:
            handle.remove()
        memory = torch.stack(captured, 1)  # (B, L, P, 2D)
        with method._spliced(backbone, memory):
            spliced = backbone.hidden(torch.cat((method.slots(2), backbone.embed(q)), 1))[:, 3:]
    assert torch.allclose(spliced, full, atol=1e-12)


@pytest.mark.parametrize(
    "name, config, parameter",
    [
        ("ttt_linear", {"num_heads": 2}, "cells.0.w0"),
        ("ttt_linear", {"num_heads": 2}, "cells.1.lr_gate.weight"),
        ("lact", {"num_heads": 2, "muon": True}, "cells.0.w2"),
        ("lact", {"num_heads": 2, "muon": False}, "cells.1.lr_proj.weight"),
        ("kv_prefix", {"num_memory": 2, "write": {"steps": 2, "optim": {"lr": 0.5}}}, "memory0"),
    ],
)
def test_meta_gradient_through_the_write_matches_finite_differences(name, config, parameter):
    """The READ loss's gradient w.r.t. a meta-parameter that acts only through the WRITE."""
    model = tiny_model(name, dtype=torch.float64, **config).train()
    batch = kv_batch(n=2, pairs=2)
    param = dict(model.method.named_parameters())[parameter]
    direction = randn(*param.shape, seed=7)
    model.zero_grad()
    model(batch).loss.backward()
    analytic = (param.grad * direction).sum()
    eps = 1e-5  # central differences: O(eps^2) error, well above float64 rounding
    with torch.no_grad():
        param += eps * direction
        up = model(batch).loss
        param -= 2 * eps * direction
        down = model(batch).loss
        param += eps * direction
    assert analytic.abs() > 1e-8
    assert torch.allclose(analytic, (up - down) / (2 * eps), rtol=2e-5, atol=1e-12)


@pytest.mark.parametrize(
    "name, config",
    [
        ("ttt_linear", {"num_heads": 2}),
        ("lact", {"num_heads": 2, "inner_lr": 0.05}),
        ("kv_prefix", {"num_memory": 2, "write": {"steps": 1}}),
    ],
)
def test_a_tiny_training_lowers_the_loss(name, config):
    model = tiny_model(name, **config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss = model(kv_batch(n=16, pairs=1, seed=step % 4)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4]), losses


def test_configs_are_validated():
    backbone = LlamaBackbone(LlamaConfig(**TINY))
    for name, bad in [
        ("ttt_linear", {"num_heads": 3}),  # does not divide the width 16
        ("ttt_linear", {"inner_lr": 0}),
        ("lact", {"expansion": 0}),
        ("lact", {"steps": -1}),
        ("kv_prefix", {"num_memory": 0}),
    ]:
        with pytest.raises(ValueError):
            build_method(name, backbone, bad)


def test_layer_input_hook_takes_positional_or_keyword_input():
    layer = nn.Identity()
    seen = []
    layer.forward = lambda hidden_states=None, *args: seen.append(hidden_states) or hidden_states
    with mapped_layer_inputs([layer], [lambda x: x + 1]):
        layer(hidden_states=torch.zeros(1))
    assert seen[0].item() == 1 and not layer._forward_pre_hooks
