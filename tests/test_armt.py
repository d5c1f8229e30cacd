"""ARMT's associative memory: the delta rule against a float64 loop reference, store-and-retrieve,
an empty memory reading nothing, the read hooks (positional and keyword inputs, removed after READ),
and gradients through the write and read hooks."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from conftest import kv_batch, tiny_model
from torch import nn
from torch.func import functional_call

from gradmem.backbones import HFBackbone
from gradmem.core.batch import pad_right
from gradmem.core.memory import Memory
from gradmem.methods import ARMTConfig
from gradmem.methods.armt import EPS, LayerMemory, _add_read, delta_update, dpfp, retrieve
from gradmem.methods.context import NoContext
from gradmem.methods.model import MemoryModel


def unit_features(*shape: int, seed: int) -> torch.Tensor:
    """Non-negative unit vectors, like normalised DPFP features."""
    g = torch.Generator().manual_seed(seed)
    return nn.functional.normalize(torch.rand(*shape, generator=g, dtype=torch.float64), dim=-1)


def reference_update(a, z, keys, values, beta, correction):
    """The delta rule written out element by element (every v_bar read from the old state)."""
    a_new, z_new = a.clone(), z.clone()
    batch, tokens, f = keys.shape
    d = values.shape[-1]
    for b in range(batch):
        for i in range(tokens):
            k = keys[b, i]
            denom = sum(z[b, j] * k[j] for j in range(f)) + EPS
            v_bar = [sum(a[b, j, c] * k[j] for j in range(f)) / denom for c in range(d)]
            gamma = min(max(1 - float(denom - EPS), 0.0), 1.0) if correction else 1.0
            for j in range(f):
                for c in range(d):
                    a_new[b, j, c] += beta[b, i] * (values[b, i, c] - v_bar[c]) * k[j]
                z_new[b, j] += gamma * k[j]
    return a_new, z_new


def test_dpfp_by_hand():
    x = torch.tensor([1.0, -2.0])  # [relu(x), relu(-x)] = [1, 0, 0, 2]
    assert dpfp(x, 1).tolist() == [2.0, 0.0, 0.0, 0.0]  # times roll 1 = [2, 1, 0, 0]
    assert dpfp(x, 2).tolist() == [2.0, 0.0, 0.0, 0.0] + [0.0, 0.0, 0.0, 0.0]  # roll 2 = [0, 2, 1, 0]
    assert dpfp(torch.randn(3, 5, 4), 3).shape == (3, 5, 2 * 3 * 4)


@pytest.mark.parametrize("correction", [True, False])
def test_delta_update_matches_float64_reference(correction):
    batch, tokens, f, d = 2, 3, 5, 4
    g = torch.Generator().manual_seed(0)
    # a state that already holds something: one earlier write from zero
    a, z = delta_update(
        torch.zeros(batch, f, d, dtype=torch.float64),
        torch.zeros(batch, f, dtype=torch.float64),
        unit_features(batch, 2, f, seed=1),
        torch.randn(batch, 2, d, generator=g, dtype=torch.float64),
        torch.rand(batch, 2, generator=g, dtype=torch.float64),
        correction,
    )
    keys = unit_features(batch, tokens, f, seed=2)
    values = torch.randn(batch, tokens, d, generator=g, dtype=torch.float64)
    beta = torch.rand(batch, tokens, generator=g, dtype=torch.float64)
    got = delta_update(a, z, keys, values, beta, correction)
    want = reference_update(a, z, keys, values, beta, correction)
    for x, y in zip(got, want):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12)


def test_store_then_retrieve():
    """beta = 1, one key: the memory returns its value; writing the key again replaces the value
    (delta rule), and with the correction the normaliser does not halve it."""
    f, d = 6, 4
    key = unit_features(1, 1, f, seed=3)
    v1, v2 = torch.randn(2, 1, 1, d, dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    zero = (torch.zeros(1, f, d, dtype=torch.float64), torch.zeros(1, f, dtype=torch.float64))
    state = delta_update(*zero, key, v1, one)
    assert torch.allclose(retrieve(*state, key), v1, rtol=1e-4)  # v / (1 + eps)
    for correction, expected in ((True, v2), (False, v2 / 2)):
        again = delta_update(*state, key, v2, one, correction)
        assert torch.allclose(retrieve(*again, key), expected, rtol=0, atol=1e-4)
    # keys with disjoint support do not interfere: each returns its own value
    keys = torch.zeros(1, 2, f, dtype=torch.float64)
    keys[0, 0, :3], keys[0, 1, 3:] = 3**-0.5, 3**-0.5
    values = torch.randn(1, 2, d, dtype=torch.float64)
    state = delta_update(*zero, keys, values, torch.ones(1, 2, dtype=torch.float64))
    assert torch.allclose(retrieve(*state, keys), values, rtol=1e-4)


def test_empty_memory_reads_nothing_and_hooks_are_removed():
    model = tiny_model("armt", num_memory=3, key_size=4).eval()
    batch = kv_batch(n=3)
    f, d = model.method.feature_size(), 16
    zeros = tuple((torch.zeros(3, f, d), torch.zeros(3, f)) for _ in range(2))
    empty = Memory(torch.zeros(3, 0, d), layer_states=zeros)
    plain = MemoryModel(model.backbone, NoContext(model.backbone))  # the same backbone, no hooks
    with torch.no_grad():
        base = plain.read(Memory(torch.zeros(3, 0, d)), batch.query, batch.target).logits
        assert torch.equal(model.read(empty, batch.query, batch.target).logits, base)
        written = model.read(model.write(batch.context), batch.query, batch.target).logits
    assert not torch.allclose(written, base)  # a written memory does change READ
    for layer in model.backbone.decoder_layers():
        assert not layer._forward_pre_hooks and not layer._forward_hooks
    with pytest.raises(ValueError, match="per-layer ARMT state"):
        model.read(Memory(torch.zeros(3, 0, d)), batch.query, batch.target)


def test_read_hook_takes_positional_or_keyword_hidden_states():
    class Layer(nn.Module):
        def forward(self, hidden_states, scale=1.0):
            return hidden_states * scale

    cell = LayerMemory(4, ARMTConfig(key_size=2))
    state = cell.write((torch.zeros(2, 12, 4), torch.zeros(2, 12)), torch.randn(2, 3, 4))
    layer, x = Layer(), torch.randn(2, 5, 4)
    layer.register_forward_pre_hook(partial(_add_read, cell, state), with_kwargs=True)
    want = (x + cell.read(state, x)) * 2.0
    assert torch.equal(layer(x, scale=2.0), want)
    assert torch.equal(layer(hidden_states=x, scale=2.0), want)


def test_gradients_reach_every_map_and_m0():
    model = tiny_model("armt", num_memory=3, key_size=4).train()
    model(kv_batch(n=3)).loss.backward()
    for name in (
        "memory0",
        *(f"layer_memories.{i}.{p}.weight" for i in range(2) for p in ("key", "value", "query", "beta")),
    ):
        grad = model.method.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_m0_gradient_matches_finite_differences():
    """The write (forward hooks) and read (pre-hooks) paths form an exact graph: gradcheck in float64."""
    model = tiny_model("armt", dtype=torch.float64, num_memory=2, key_size=2).eval()
    batch = kv_batch(n=2)

    def loss(memory0: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {"method.memory0": memory0}, (batch,)).loss

    assert torch.autograd.gradcheck(loss, (model.method.memory0.detach().clone().requires_grad_(),))


def test_memory_rows_keep_their_layer_state():
    model = tiny_model("armt", num_memory=2, key_size=2).eval()
    batch = kv_batch(n=2)
    query = batch.query.ids[1, : batch.query.lengths[1]].tolist()
    with torch.no_grad():
        memory = model.write(batch.context)
        both = model.generate(memory, batch.query, 3)
        again = model.generate(memory.select(1).repeat(2), pad_right([query, query]), 3)
    assert torch.equal(again[0], both[1]) and torch.equal(again[1], both[1])
    assert memory.select(0).layer_states[0][0].shape == (1, 12, 16)  # A: (1, F = 2 * 3 * 2, D)
    assert torch.equal(memory.select(0).layer_states[1][1], memory.layer_states[1][1][:1])
    model.train()
    trained = model.write(batch.context)
    assert trained.layer_states[0][0].requires_grad
    assert all(not t.requires_grad for layer in trained.detach().layer_states for t in layer)


def test_hf_layer_accessor_finds_gpt2_style_blocks():
    """Llama-style decoders keep their blocks in `layers` (the HF case of tests/test_methods.py),
    GPT-2 in `h`; anything else is refused by name. A stand-in with GPT-2's layout keeps this fast."""

    class GPT2Like(nn.Module):
        def __init__(self, blocks: str) -> None:
            super().__init__()
            self.config = SimpleNamespace(hidden_size=4)
            self.transformer = nn.Module()
            setattr(self.transformer, blocks, nn.ModuleList([nn.Identity(), nn.Identity()]))
            self.lm_head = nn.Linear(4, 7)

        base_model = property(lambda self: self.transformer)

        def get_output_embeddings(self) -> nn.Module:
            return self.lm_head

    wrapped = HFBackbone(GPT2Like("h"))
    assert wrapped.decoder_layers() is wrapped.model.transformer.h
    with pytest.raises(TypeError, match="neither `layers` nor `h`"):
        HFBackbone(GPT2Like("blocks")).decoder_layers()


def test_config_is_validated():
    for bad in ({"key_size": 0}, {"nu": 0}, {"num_memory": 0}, {"init_std": 0.0}):
        with pytest.raises(ValueError):
            ARMTConfig(**bad)
