"""One shared test for every memory method in the registry (and the main variants of each):
forward, backward, write / read / generate, checkpoint and memory-file round trips (a memory with
per-layer state, ARMT's, must be refused by memory files), batch invariance, and the memory-state
size every method reports."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, kv_batch

from gradmem.backbones.base import context_state_floats
from gradmem.backbones.mamba import mamba_backbone, mamba_state_floats
from gradmem.core.batch import collate, pad_right
from gradmem.core.memory_file import load_memory, save_memory
from gradmem.methods import METHODS
from gradmem.run.build import build_model
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.tasks.kv import KVConfig, generate_kv

LLAMA = {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}}
MAMBA = {
    "name": "hf",
    "config": {
        "model_type": "mamba",
        "vocab_size": 70,
        "hidden_size": 16,
        "state_size": 4,
        "num_hidden_layers": 2,
        "expand": 2,
        "conv_kernel": 4,
    },
}
HF_LLAMA = {
    "name": "hf",
    "config": {
        "model_type": "llama",
        "vocab_size": 70,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
    },
}
ADAM = {"optim": {"name": "adam", "lr": 0.1}}
# memories kept inside the layers (kv_prefix: beside a shared slot prefix): no memory files
LAYER_STATE_METHODS = {"armt", "ttt_linear", "lact", "kv_prefix"}

# case -> (method spec, backbone spec); every registered method appears at least once
CASES = {
    "gradmem-none": (
        {"name": "gradmem", "num_memory": 3, "projection": "none", "control_tokens": True, "write": ADAM},
        LLAMA,
    ),
    "gradmem-linear-control": ({"name": "gradmem", "num_memory": 3, "control_tokens": True, "write": ADAM}, LLAMA),
    "gradmem-fast": (
        {"name": "gradmem", "num_memory": 2, "projection": "fast", "control_tokens": True, "write": ADAM},
        LLAMA,
    ),
    "gradmem-first-order": ({"name": "gradmem", "num_memory": 3, "write": {"grad_mode": "first"}}, LLAMA),
    "rmt-x1": ({"name": "rmt", "num_memory": 3}, LLAMA),
    "rmt-x2-no-projection": ({"name": "rmt", "num_memory": 3, "projection": "none", "steps": 2}, LLAMA),
    "full_context": ({"name": "full_context"}, LLAMA),
    "no_context": ({"name": "no_context"}, LLAMA),
    "mamba-full_context": ({"name": "full_context"}, MAMBA),
    "armt": ({"name": "armt", "num_memory": 3, "key_size": 4}, LLAMA),
    "armt-no-correction-hf": ({"name": "armt", "num_memory": 2, "key_size": 3, "nu": 2, "correction": False}, HF_LLAMA),
    "ttt_linear": ({"name": "ttt_linear", "num_heads": 2}, LLAMA),
    "ttt_linear-k2-hf": ({"name": "ttt_linear", "num_heads": 4, "steps": 2}, HF_LLAMA),
    "lact": ({"name": "lact", "num_heads": 2}, LLAMA),
    "lact-plain-hf": ({"name": "lact", "num_heads": 2, "expansion": 2.0, "muon": False, "steps": 2}, HF_LLAMA),
    "kv_prefix-size": ({"name": "kv_prefix", "num_memory": 1, "write": {"steps": 1}}, LLAMA),
    "kv_prefix-length-adam-hf": ({"name": "kv_prefix", "num_memory": 3, "write": ADAM}, HF_LLAMA),
}


def spec_for(case: str) -> dict:
    method, backbone = CASES[case]
    return {"task": {"name": "kv", "num_pairs": 2}, "backbone": backbone, "method": method, "train": {}}


def model_for(case: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(spec_for(case)).eval()  # eval: no dropout, so outputs are deterministic


def test_every_registered_method_is_covered():
    assert set(METHODS) <= {method["name"] for method, _ in CASES.values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_backward(case):
    model = model_for(case).train()
    out = model(kv_batch(n=3, pairs=2))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert any(g.abs().sum() > 0 for g in grads.values())
    own = [name for name, _ in model.method.named_parameters()]
    for name in own:  # a method's own learned state (M0, projection, heads) is trained through READ
        if name != "write_head.weight" or CASES[case][0].get("write", {}).get("grad_mode") != "first":
            assert grads.get(f"method.{name}") is not None and grads[f"method.{name}"].abs().sum() > 0, name


@pytest.mark.parametrize("case", sorted(CASES))
def test_write_read_generate(case):
    model = model_for(case)
    batch = kv_batch(n=4, pairs=2)
    with torch.no_grad():
        memory = model.write(batch.context)
        read = model.read(memory, batch.query, batch.target)
    assert memory.prefix.shape[0] == 4 and memory.prefix.shape[2] == 16
    assert read.logits.shape == (4, batch.target.ids.shape[1], 70)
    out = model.generate(memory, batch.query, 3)
    assert out.shape == (4, 3)
    assert torch.equal(out[:, 0], read.logits[:, 0].argmax(-1))  # greedy = teacher-forced first token
    # one memory serves many queries: row 0 repeated answers like row 0
    again = model.generate(
        memory.select(0).repeat(2), pad_right([batch.query.ids[0, : batch.query.lengths[0]].tolist()] * 2), 3
    )
    assert torch.equal(again[0], out[0]) and torch.equal(again[1], out[0])


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_and_memory_file_round_trip(case, tmp_path):
    model = model_for(case)
    spec = spec_for(case)
    save_checkpoint(tmp_path / "ckpt", model, spec)
    loaded, _, loaded_spec = load_checkpoint(tmp_path / "ckpt")
    loaded.eval()
    assert loaded_spec == spec
    batch = kv_batch(n=3, pairs=2)
    with torch.no_grad():
        a = model.read(model.write(batch.context), batch.query, batch.target).logits
        b = loaded.read(loaded.write(batch.context), batch.query, batch.target).logits
    assert torch.equal(a, b)
    ids = batch.context.ids[0, : batch.context.lengths[0]].tolist()
    with torch.no_grad():
        memory = model.write(pad_right([ids]))
    assert (memory.layer_states is not None) == (spec["method"]["name"] in LAYER_STATE_METHODS)
    if memory.layer_states is not None:  # a file holds a prefix: refused, never saved without the state
        with pytest.raises(ValueError, match="per-layer state"):
            save_memory(tmp_path / "mem", memory, model, ids, {})
        assert not list(tmp_path.glob("mem*"))
        return
    path = save_memory(tmp_path / "mem", memory, model, ids, {})
    restored, meta = load_memory(path, loaded)
    assert meta["method"] == spec["method"]["name"]
    assert torch.equal(restored.prefix, memory.prefix)


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_invariance(case):
    """An example's memory and answer do not depend on its batch-mates or on padding."""
    model = model_for(case)
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
    for layer_all, layer_alone in zip(m_all.layer_states or (), m_alone.layer_states or ()):
        for t_all, t_alone in zip(layer_all, layer_alone):
            assert torch.allclose(t_all[0], t_alone[0], atol=1e-5)
    assert torch.allclose(r_all.logits[0], r_alone.logits[0], atol=1e-5)
    assert torch.allclose(r_all.per_example_loss[0], r_alone.per_example_loss[0], atol=1e-5)
    assert torch.equal(model.generate(m_all, together.query, 4)[0], model.generate(m_alone, alone.query, 4)[0])


def test_state_sizes():
    """Floats each method keeps per example (paper Table 6)."""
    d = 16

    def floats(name: str, tokens: int = 15) -> int:
        model = model_for(name)
        return model.method.state_floats(model.backbone, tokens)

    assert floats("gradmem-none") == 3 * d
    assert floats("gradmem-fast") == 2 * d + d * d  # memory + written fast weights
    assert floats("rmt-x1") == 3 * d
    assert floats("no_context") == 0
    assert floats("armt") == 2 * (24 * d + 24)  # layers x (A: F x d, z: F), F = 2 * 3 * 4
    assert floats("full_context") == 2 * 2 * 15 * d  # its KV cache: 2 x layers x tokens x d
    assert floats("ttt_linear") == 2 * 2 * (8 * 8 + 8)  # layers x heads x (W: dh x dh, b: dh)
    assert floats("lact") == 2 * 2 * 3 * 8 * 8  # layers x heads x (W0, W1, W2: dh x dm)
    assert floats("kv_prefix-size") == 2 * 1 * 2 * d  # layers x P x (key, value)
    assert floats("kv_prefix-length-adam-hf") == 2 * 3 * 2 * d
    # 2 layers x d_inner 32 x (d_state 4 + conv 4 - 1), whatever the context's length
    assert (
        floats("mamba-full_context", 15)
        == floats("mamba-full_context", 500)
        == mamba_state_floats(MAMBA["config"])
        == 2 * 32 * 7
    )
    assert context_state_floats(mamba_backbone(vocab_size=70, hidden_size=8, num_hidden_layers=1), 9) == 16 * (16 + 3)


def test_kv_cache_counts_grouped_query_attention():
    from transformers import LlamaConfig as HFLlamaConfig

    from gradmem.backbones.hf import HFBackbone

    config = HFLlamaConfig(
        vocab_size=70,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    # 2 x 3 layers x 10 tokens x 2 KV heads x head width 8: half the cache of full multi-head attention
    assert context_state_floats(HFBackbone.from_config(config), 10) == 2 * 3 * 10 * 2 * 8


def test_rmt_rereading_and_trailing_memory_position():
    """xK re-reading changes the memory; the trailing memory sits right after the real tokens, so a
    context read with extra padding writes the same memory."""
    model = model_for("rmt-x1")
    ids = kv_batch(n=1, pairs=2).context
    padded = pad_right([ids.ids[0].tolist()])
    padded.ids = torch.cat((padded.ids, torch.zeros(1, 5, dtype=torch.long)), 1)  # 5 pads, same length
    with torch.no_grad():
        once, twice = model.write(ids).prefix, model.write(ids, steps=2).prefix
        assert not torch.allclose(once, twice)
        assert torch.allclose(model.write(padded).prefix, once, atol=1e-6)
        zero = model.write(ids, steps=0).prefix
    assert torch.allclose(zero, model.method.prefix(model.method.memory0[None]))
    with pytest.raises(ValueError, match="projection"):
        build_model({**spec_for("rmt-x1"), "method": {"name": "rmt", "projection": "fast"}})
