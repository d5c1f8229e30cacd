"""The engine behind the CLI and the service: batched writes into the store, long contexts in
blocks, batched answers, reconstruction, and memory-file errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model

from gradmem.backbones.base import context_state_floats
from gradmem.core.batch import pad_right
from gradmem.core.memory_file import load_memory, save_memory
from gradmem.serve.engine import Engine, EngineConfig
from gradmem.serve.store import MemoryStore
from gradmem.tasks.tokenizers import CharTokenizer

TOK = CharTokenizer.for_kv(62)
TEXT = "!ab:cd!!ef:gh!|"


def engine(tmp_path, model=None, **cfg):
    return Engine(model or tiny_model(), TOK, MemoryStore(tmp_path / "store"), EngineConfig(**cfg))


def test_engine_write_equals_model_write(tmp_path):
    e = engine(tmp_path)
    [result] = e.write_texts([TEXT])
    with torch.no_grad():
        expected = e.model.write(pad_right([TOK.encode(TEXT)]), measure_final=True)
    assert torch.equal(e.memory(result.id).prefix, expected.prefix)
    assert result.meta["write_loss"] == pytest.approx(expected.stats.losses[:, 0].tolist())


def test_same_text_is_written_once_and_progress_is_reported(tmp_path):
    e = engine(tmp_path)
    seen = []
    first = e.write_texts([TEXT, "!xy:zz!|", TEXT], on_step=lambda i, s, loss: seen.append((i, s)))
    assert [r.created for r in first] == [True, True, False] and first[0].id == first[2].id
    assert sorted(seen) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # K=2 steps + final, per text
    seen.clear()
    again = engine(tmp_path).write_texts([TEXT], on_step=lambda i, s, loss: seen.append(s))  # a new process
    assert not again[0].created and again[0].id == first[0].id and seen == []
    assert e.write_texts([TEXT], steps=3)[0].id != first[0].id  # other settings, other memory


def test_long_context_is_written_in_blocks(tmp_path):
    e = engine(tmp_path, chunk_tokens=6, max_blocks=3)
    text = "!ab:cd!!ef:gh!|"  # 15 tokens -> chunks of 6, 6, 3
    [result] = e.write_texts([text])
    assert result.meta["blocks"] == 3 and result.meta["num_vectors"] == 3 * 3
    ids = TOK.encode(text)
    with torch.no_grad():
        parts = [e.model.write(pad_right([ids[i : i + 6]])).prefix for i in (0, 6, 12)]
    assert torch.allclose(e.memory(result.id).prefix, torch.cat(parts, 1), atol=1e-5)
    with pytest.raises(ValueError, match="exceeds the limit of 18 tokens"):
        e.write_texts([text + "abcd"])
    answers = e.ask([(result.id, "?!ab:")], max_new_tokens=3)
    with torch.no_grad():  # the same greedy decode by hand, from the concatenated blocks
        ids = e.model.generate(e.memory(result.id), pad_right([TOK.encode("?!ab:")]), 3)[0]
    assert answers == [TOK.decode(ids.tolist())] and len(answers[0]) == 3
    with pytest.raises(ValueError, match="exceeds the backbone|window"):
        engine(tmp_path, chunk_tokens=500)


def test_batched_answers_equal_one_by_one(tmp_path):
    e = engine(tmp_path, chunk_tokens=8)
    a, b = e.write_texts([TEXT, "!qq:rr!|"])  # a has 2 blocks, b has 1: two prefix lengths in one call
    items = [(a.id, "?!ab:"), (b.id, "?!qq:"), (a.id, "?!ef:"), (b.id, "?!q")]
    batched = e.ask(items, max_new_tokens=4)
    assert batched == [e.ask([item], max_new_tokens=4)[0] for item in items]
    with pytest.raises(KeyError):
        e.ask([("0" * 32, "?")])


def test_reconstruction_reports_the_greedy_decode_and_its_accuracy(tmp_path):
    e = engine(tmp_path)
    [result] = e.write_texts([TEXT], steps=3, target_loss=None)
    report = e.reconstruct(result.id)
    ids = TOK.encode(TEXT)
    assert report["context"] == TEXT and len(report["write_loss"]) == 3
    memory = e.memory(result.id)
    with torch.no_grad():  # the first reconstructed token: WRITE head at the last memory position
        first = e.model.method.write_head(e.model.backbone.hidden(memory.prefix)[:, -1]).argmax(-1)
    decoded = report["reconstruction"]
    assert len(decoded) == len(ids) and decoded[0] == TOK.decode([int(first)], skip_special=False)
    hand = sum(x == y for x, y in zip(TOK.encode(decoded), ids)) / len(ids)
    assert report["token_accuracy"] == pytest.approx(hand)
    with torch.no_grad():  # teacher forced: the WRITE head's argmax at every position given the true prefix
        row = torch.tensor([ids])
        logits = e.model.method.reconstruction_logits(e.model.backbone, memory.prefix, e.model.backbone.embed(row))
    assert report["teacher_forced_accuracy"] == pytest.approx((logits.argmax(-1) == row).float().mean().item())
    assert report["memory_bytes"] == 3 * 16 * 4
    assert report["kv_cache_bytes"] == context_state_floats(e.model.backbone, 15) * 4 == 2 * 2 * 15 * 16 * 4


def test_memory_files_refuse_other_backbones_dtypes_and_versions(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        memory = model.write(pad_right([[5, 6, 7]]), measure_final=True)
    path = save_memory(tmp_path / "m", memory, model, [5, 6, 7], {"steps": 2})
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["backbone"]["architecture"] == "llama" and meta["backbone"]["config"]["num_layers"] == 2
    assert len(meta["backbone"]["weights_sha256"]) == 64 and meta["dtype"] == "float32"
    with pytest.raises(ValueError, match="different weights"):
        load_memory(path, tiny_model(seed=1))
    from conftest import TINY

    from gradmem.backbones import LlamaBackbone, LlamaConfig
    from gradmem.methods import build_method
    from gradmem.methods.model import MemoryModel

    wider = LlamaBackbone(LlamaConfig(**{**TINY, "num_layers": 3}))
    with pytest.raises(ValueError, match="another backbone architecture"):
        load_memory(path, MemoryModel(wider, build_method("gradmem", wider, {"num_memory": 3})))
    side = path.with_suffix(".json")
    side.write_text(json.dumps({**meta, "dtype": "float16"}))
    with pytest.raises(ValueError, match="does not match its sidecar"):
        load_memory(path, model)
    side.write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(ValueError, match="older"):
        load_memory(path, model)
    side.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        load_memory(path, model)
