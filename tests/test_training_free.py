"""Training-free GradMem: M0 from the mean-embedding rule, nothing trainable, and more inner Adam
steps write a memory that reconstructs the context better (tiny random Llama)."""

from __future__ import annotations

import torch

from gradmem.backbones import build_backbone
from gradmem.core.batch import collate
from gradmem.evaluation.evaluate import evaluate
from gradmem.methods.training_free import mean_embedding, training_free_model
from gradmem.tasks.kv import KVConfig, generate_kv

TINY = {
    "model_type": "llama",
    "vocab_size": 70,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}


def test_training_free_write_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    backbone = build_backbone({"name": "hf", "config": dict(TINY)})
    model = training_free_model(backbone, num_memory=2, steps=20, lr=0.1)
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.method.memory0[1], mean_embedding(backbone))
    batch = collate(generate_kv(KVConfig(num_pairs=2), 4, seed=0))
    with torch.no_grad():
        memory = model.write(batch.context, measure_final=True)
    losses = memory.stats.losses.mean(1)  # (K,) mean loss before each step
    assert float(memory.stats.final_loss.mean()) < float(losses[0]) - 0.02
    examples = generate_kv(KVConfig(num_pairs=2), 4, seed=0)
    assert evaluate(model, examples, 4, steps=0)["write_loss"] == []
