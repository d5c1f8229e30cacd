"""Hugging Face causal LMs as backbones: tiny random Llama and GPT-2 built in-process."""

from __future__ import annotations

import pytest
import torch
from conftest import kv_batch
from transformers import GPT2Config
from transformers import LlamaConfig as HFLlamaConfig

from gradmem.backbones import HFBackbone, build_backbone
from gradmem.core.batch import collate
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel
from gradmem.tasks.kv import KVConfig, generate_kv

CONFIGS = {
    "llama": lambda: HFLlamaConfig(
        vocab_size=70,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
    ),
    "gpt2": lambda: GPT2Config(vocab_size=70, n_embd=16, n_layer=2, n_head=2, n_positions=128),
}


def hf_model(kind: str, attn: str = "eager", **method_cfg) -> MemoryModel:
    torch.manual_seed(0)
    backbone = HFBackbone.from_config(CONFIGS[kind](), attn_implementation=attn)
    return MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 2, **method_cfg}))


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_second_order_training_step(kind):
    model = hf_model(kind)
    out = model(kv_batch(n=3, pairs=2))
    out.loss.backward()
    assert model.method.memory0.grad.abs().sum() > 0
    assert model.method.write_head.weight.grad.abs().sum() > 0  # reached only through the inner gradient


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_fused_attention_refuses_second_order(kind):
    model = hf_model(kind, attn="sdpa")
    with pytest.raises(RuntimeError, match="double backward"):
        model(kv_batch(n=2))
    first = hf_model(kind, attn="sdpa", write={"grad_mode": "first"})
    first(kv_batch(n=2)).loss.backward()  # first order is fine with fused kernels, when asked for


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_padding_does_not_change_an_example(kind):
    model = hf_model(kind).eval()  # GPT-2 has dropout
    examples = generate_kv(KVConfig(num_pairs=1), 1, seed=1) + generate_kv(KVConfig(num_pairs=3), 2, seed=2)
    with torch.no_grad():
        alone, together = collate(examples[:1]), collate(examples)
        a = model.read(model.write(alone.context), alone.query, alone.target).logits[0]
        b = model.read(model.write(together.context), together.query, together.target).logits[0]
    assert torch.allclose(a, b, atol=1e-5)


def test_rebuild_from_description():
    backbone = HFBackbone.from_config(CONFIGS["gpt2"]())
    rebuilt = build_backbone(backbone.describe())
    assert isinstance(rebuilt, HFBackbone) and rebuilt.describe() == backbone.describe()
