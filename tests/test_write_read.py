"""WRITE and READ behaviour: reconstruction improves over steps, evaluation-time overrides, and
clear errors for bad input. (Batch invariance of every method: tests/test_methods.py.)"""

from __future__ import annotations

import pytest
import torch
from conftest import kv_batch, tiny_model

from gradmem.backbones import LlamaBackbone, LlamaConfig
from gradmem.core.batch import pad_right
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel


def test_reconstruction_loss_decreases_over_write_steps():
    model = tiny_model(write={"steps": 6, "optim": {"name": "sgd", "lr": 2.0}})
    with torch.no_grad():
        memory = model.write(kv_batch(n=8, pairs=2).context, measure_final=True)
    curve = memory.stats.losses.mean(1)
    assert memory.stats.steps == 6
    assert torch.all(curve[1:] < curve[:-1]), curve
    assert memory.stats.final_loss.mean() < curve[-1]


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
