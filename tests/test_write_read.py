"""WRITE and READ behaviour: reconstruction improves over steps, padding and batch-mates change
nothing, evaluation-time overrides, and clear errors for bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import kv_batch, tiny_model
from gradmem.backbones import LlamaBackbone, LlamaConfig
from gradmem.data import collate, pad_right
from gradmem.methods import build_method
from gradmem.model import MemoryModel
from gradmem.tasks.kv import KVConfig, generate_kv


def test_reconstruction_loss_decreases_over_write_steps():
    model = tiny_model(write={"steps": 6, "optim": {"name": "sgd", "lr": 2.0}})
    with torch.no_grad():
        memory = model.write(kv_batch(n=8, pairs=2).context, measure_final=True)
    curve = memory.stats.losses.mean(1)
    assert memory.stats.steps == 6
    assert torch.all(curve[1:] < curve[:-1]), curve
    assert memory.stats.final_loss.mean() < curve[-1]


@pytest.mark.parametrize("method,projection", [("gradmem", "none"), ("gradmem", "linear"), ("gradmem", "fast"),
                                               ("full_context", None), ("no_context", None)])
def test_batch_invariance(method, projection):
    """An example's memory and answer do not depend on its batch-mates or on padding."""
    cfg = {"projection": projection, "control_tokens": True, "write": {"optim": {"name": "adam", "lr": 0.1}}} if method == "gradmem" else {}
    model = tiny_model(method, **cfg)
    mixed = generate_kv(KVConfig(num_pairs=1), 1, seed=1) + generate_kv(KVConfig(num_pairs=4), 3, seed=2)
    with torch.no_grad():
        alone = collate(mixed[:1])
        m_alone = model.write(alone.context)
        r_alone = model.read(m_alone, alone.query, alone.target)
        together = collate(mixed)  # the 1-pair example is now padded to the 4-pair length
        m_all = model.write(together.context)
        r_all = model.read(m_all, together.query, together.target)
    p = m_alone.prefix_lengths()[0]
    assert torch.allclose(m_all.prefix[0, :p], m_alone.prefix[0, :p], atol=1e-5)
    assert torch.allclose(r_all.logits[0], r_alone.logits[0], atol=1e-5)
    assert torch.allclose(r_all.per_example_loss[0], r_alone.per_example_loss[0], atol=1e-5)
    g_alone = model.generate(m_alone, alone.query, 4)
    g_all = model.generate(m_all, together.query, 4)
    assert torch.equal(g_all[0], g_alone[0])


def test_write_steps_and_lr_override_at_evaluation():
    model = tiny_model(write={"steps": 1})
    context = kv_batch().context
    with torch.no_grad():
        assert model.write(context).stats.steps == 1
        assert model.write(context, steps=5).stats.steps == 5
        zero = model.write(context, steps=0)
        assert torch.allclose(zero.prefix, model.method.prefix(model.method.initial_params(len(context))))
        a = model.write(context, lr=0.1).prefix
        b = model.write(context, lr=1.0).prefix
    assert not torch.allclose(a, b)


def test_generate_stops_at_eos_and_matches_teacher_forcing():
    model = tiny_model()
    batch = kv_batch()
    with torch.no_grad():
        memory = model.write(batch.context)
        logits = model.read(memory, batch.query, batch.target).logits
    out = model.generate(memory, batch.query, 1)
    assert torch.equal(out[:, 0], logits[:, 0].argmax(-1))  # first generated token = teacher-forced argmax
    eos = int(out[0, 0])
    stopped = model.generate(memory, batch.query, 3, eos_id=eos)
    assert stopped[0, 0] == eos and torch.all(stopped[0, 1:] == -1)


def test_empty_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty context"):
        model.write(pad_right([[5, 6], []]))


def test_over_long_context_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds"):
        model.write(pad_right([[5] * 200]))


def test_second_order_with_fused_attention_is_an_error_not_a_switch():
    torch.manual_seed(0)
    backbone = LlamaBackbone(LlamaConfig(vocab_size=70, hidden_size=16, num_layers=1, num_heads=2, attention="sdpa"))
    model = MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 2}))
    batch = kv_batch()
    with pytest.raises(RuntimeError, match="double backward"):
        model(batch)
    with torch.no_grad():  # evaluation needs no second order: the fused kernel is fine there
        model.write(batch.context)


def test_bad_method_config_is_a_clear_error():
    backbone = LlamaBackbone(LlamaConfig(hidden_size=16, num_heads=2, num_layers=1))
    with pytest.raises(ValueError, match="unknown method"):
        build_method("gradmen", backbone)
    with pytest.raises(ValueError, match="projection"):
        build_method("gradmem", backbone, {"projection": "conv"})
    with pytest.raises(ValueError, match="grad_mode"):
        build_method("gradmem", backbone, {"write": {"grad_mode": "third"}})
    with pytest.raises(ValueError, match="bad config"):
        build_method("gradmem", backbone, {"num_memroy": 4})
