"""Attention kernels: `sdpa_explicit` (fused forward, explicit differentiable backward) and `sdpa_hvp`
(also an explicit second derivative) against plain `math` attention in float64, for values,
gradients and second-order gradients, in both the built-in decoder and a Hugging Face Llama."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, kv_batch
from transformers import LlamaConfig as HFLlamaConfig

from gradmem.backbones import HFBackbone, LlamaBackbone, LlamaConfig
from gradmem.core.attention import (
    DOUBLE_BACKWARD,
    HF_ATTENTION_NAME,
    HF_HVP_ATTENTION_NAME,
    get_attention,
    math_attention,
    sdpa_explicit_attention,
    sdpa_hvp_attention,
)
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel


def qkv(b=2, h=3, t=9, dh=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, dh, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(3))


KERNELS = {"sdpa_explicit": sdpa_explicit_attention, "sdpa_hvp": sdpa_hvp_attention}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("t", [1, 5, 17])
def test_values_and_gradients_match_math(t, kernel):
    q, k, v = qkv(t=t)
    ref, out = math_attention(q, k, v), KERNELS[kernel](q, k, v)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), (q, k, v), create_graph=True)
    g_out = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # second order: gradient of <grad, u> (a Hessian-vector product) w.r.t. q, k, v
    u = [torch.randn_like(x) for x in (q, k, v)]
    h_ref = torch.autograd.grad(sum((g * d).sum() for g, d in zip(g_ref, u)), (q, k, v))
    h_out = torch.autograd.grad(sum((g * d).sum() for g, d in zip(g_out, u)), (q, k, v))
    for a, b in zip(h_out, h_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_gradcheck_and_gradgradcheck(kernel):
    q, k, v = qkv(b=1, h=2, t=6, dh=3)
    assert torch.autograd.gradcheck(KERNELS[kernel], (q, k, v))
    assert torch.autograd.gradgradcheck(KERNELS[kernel], (q, k, v))


def test_hvp_kernel_refuses_third_order():
    q, k, v = qkv(t=4)
    (g,) = torch.autograd.grad(sdpa_hvp_attention(q, k, v).pow(2).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivative only"):
        torch.autograd.grad(g.pow(2).sum(), q, create_graph=True)


def test_registry():
    assert get_attention("sdpa_explicit") is sdpa_explicit_attention
    assert get_attention("sdpa_hvp") is sdpa_hvp_attention
    assert all(DOUBLE_BACKWARD[n] for n in ("math", "sdpa_explicit", "sdpa_hvp")) and not DOUBLE_BACKWARD["sdpa"]
    with pytest.raises(ValueError, match="valid"):
        get_attention("flash")


def meta_gradients(model: MemoryModel) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(kv_batch(n=3, pairs=2)).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_builtin_backbone_second_order_matches_math():
    grads = {}
    for attention in ("math", "sdpa_explicit", "sdpa_hvp"):
        torch.manual_seed(0)
        backbone = LlamaBackbone(LlamaConfig(**{**TINY, "attention": attention}))
        model = MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 3})).double()
        assert backbone.supports_double_backward()
        grads[attention] = meta_gradients(model)
    for kernel in ("sdpa_explicit", "sdpa_hvp"):
        assert grads["math"].keys() == grads[kernel].keys()
        for name, ref in grads["math"].items():
            torch.testing.assert_close(grads[kernel][name], ref, rtol=1e-9, atol=1e-12, msg=f"{kernel} {name}")


def hf_llama(attn: str, kv_heads: int) -> MemoryModel:
    torch.manual_seed(0)
    config = HFLlamaConfig(
        vocab_size=70,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
    )
    backbone = HFBackbone.from_config(config, attn_implementation=attn)
    return MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 2})).double()


@pytest.mark.parametrize("name", [HF_ATTENTION_NAME, HF_HVP_ATTENTION_NAME])
@pytest.mark.parametrize("kv_heads", [4, 2])  # 2: grouped-query attention
def test_hf_registration_matches_eager(kv_heads, name):
    custom, eager = hf_llama(name, kv_heads), hf_llama("eager", kv_heads)
    assert custom.backbone.attn_implementation == name
    assert custom.backbone.supports_double_backward()
    g_custom, g_eager = meta_gradients(custom), meta_gradients(eager)
    assert g_custom.keys() == g_eager.keys()
    # transformers' eager attention takes its softmax in float32 even for float64 models
    for name, ref in g_eager.items():
        error, scale = (g_custom[name] - ref).abs().max().item(), ref.abs().max().item()
        assert error <= 1e-5 * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


def test_hf_kernel_refuses_a_mask():
    model = hf_llama(HF_ATTENTION_NAME, 4).backbone.model
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="causal-only"):
        model(input_ids=ids, attention_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool))
