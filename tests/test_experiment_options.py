"""Library options that experiment presets use: the mean-embedding M0 (method.init) set at the end of
build_model exactly as the scripts set it by hand, and evaluate's swapped-memory READ loss and
reconstruction loss after the WRITE, checked against the same quantities computed by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY

from gradmem.core.batch import iterate_batches
from gradmem.core.memory import mean_embedding
from gradmem.evaluation.evaluate import evaluate
from gradmem.run.build import build_model
from gradmem.tasks.kv import KVConfig, generate_kv


def _spec(method: dict) -> dict:
    return {
        "task": {"name": "kv", "num_pairs": 2},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": method,
    }


@pytest.mark.parametrize("name", ["gradmem", "rmt"])
def test_mean_embedding_init_equals_setting_m0_by_hand_after_the_build(name):
    # What benchmarks/babi_pretrained.py did: seed, build with the normal M0, then overwrite M0 from the
    # finished backbone (noise drawn last). The option must give the same tensors, bit for bit.
    torch.manual_seed(3)
    by_hand = build_model(_spec({"name": name, "num_memory": 3}))
    memory0 = by_hand.method.memory0
    with torch.no_grad():
        memory0.copy_(mean_embedding(by_hand.backbone).expand_as(memory0) + 0.01 * torch.randn_like(memory0))
    after_by_hand = torch.randn(4)  # the generator state the rest of a run starts from
    torch.manual_seed(3)
    option = build_model(_spec({"name": name, "num_memory": 3, "init": "mean_embedding"}))
    assert torch.equal(torch.randn(4), after_by_hand)
    for (key, a), (_, b) in zip(by_hand.state_dict().items(), option.state_dict().items(), strict=True):
        assert torch.equal(a, b), key
    # the rows sit at the mean embedding, not at the normal(0, 0.02) draw
    assert (option.method.memory0 - mean_embedding(option.backbone)).abs().max() < 0.06


def test_normal_init_is_unchanged_and_unknown_inits_are_refused():
    torch.manual_seed(3)
    default = build_model(_spec({"name": "gradmem", "num_memory": 3}))
    torch.manual_seed(3)
    normal = build_model(_spec({"name": "gradmem", "num_memory": 3, "init": "normal"}))
    assert torch.equal(default.method.memory0, normal.method.memory0)
    with pytest.raises(ValueError, match="mean_embedding"):
        build_model(_spec({"name": "rmt", "init": "zeros"}))


def test_swapped_memory_loss_and_final_write_loss_by_hand():
    torch.manual_seed(0)
    model = build_model(_spec({"name": "gradmem", "num_memory": 2, "write": {"steps": 2}})).eval()
    examples = generate_kv(KVConfig(num_pairs=2), 6, seed=1)
    result = evaluate(model, examples, 3, swap_check=True, measure_final=True)
    swapped = final = own = 0.0
    with torch.no_grad():
        for batch in iterate_batches(examples, 3, 0):
            memory = model.write(batch.context, measure_final=True)
            rolled = type(memory)(memory.prefix[[2, 0, 1]])  # example i reads example i-1's memory
            swapped += model.read(rolled, batch.query, batch.target).per_example_loss.sum().item()
            own += model.read(memory, batch.query, batch.target).per_example_loss.sum().item()
            final += memory.stats.final_loss.sum().item()
    assert result["loss_swapped"] == pytest.approx(swapped / 6, rel=1e-6)
    assert result["write_loss_final"] == pytest.approx(final / 6, rel=1e-6)
    assert result["loss"] == pytest.approx(own / 6, rel=1e-6)
    assert result["loss_swapped"] != pytest.approx(result["loss"], rel=1e-4)  # another memory reads differently
    plain = evaluate(model, examples, 3)
    assert "loss_swapped" not in plain and "write_loss_final" not in plain
    assert plain["loss"] == result["loss"]  # the options add numbers, they change none


def test_swap_check_of_a_method_without_memory_changes_nothing():
    torch.manual_seed(0)
    model = build_model(_spec({"name": "no_context"}))
    examples = generate_kv(KVConfig(num_pairs=2), 4, seed=1)
    result = evaluate(model, examples, 4, swap_check=True, measure_final=True)
    assert result["loss_swapped"] == pytest.approx(result["loss"], rel=1e-6)
    assert "write_loss_final" not in result  # nothing written by gradient steps
