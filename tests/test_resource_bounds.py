"""Hardening round 2, resources: the attention mask cache is bounded, freed memory goes back to the
OS after model work, and a reconstruction is bounded by its real cost and stops at its deadline."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import tiny_model

from gradmem.core import attention
from gradmem.serve import os_memory
from gradmem.serve.engine import Engine, EngineConfig
from gradmem.serve.service_config import ServiceConfig
from gradmem.serve.store import MemoryStore
from gradmem.tasks.tokenizers import CharTokenizer

TEXT = "!ab:cd!!ef:gh!|"


def make_engine(root) -> Engine:
    return Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )


def create_app(engine, cfg):
    from gradmem.serve.service import create_app as create

    return create(engine, cfg)


def test_the_mask_cache_keeps_only_the_recently_used_lengths():
    attention._MASK_CACHE.clear()
    for length in range(1, 50):  # a server sees every length its clients send
        bias = attention.causal_bias(length, torch.device("cpu"), torch.float32)
        assert torch.equal(bias, torch.full((length, length), float("-inf")).triu(1))
    assert len(attention._MASK_CACHE) == attention.MASK_CACHE_SIZE  # once: 49 masks, one per length
    kept = attention.causal_bias(49, torch.device("cpu"), torch.float32)
    assert attention.causal_bias(49, torch.device("cpu"), torch.float32) is kept  # a hit is the cached mask


def test_freed_memory_is_returned_on_glibc():
    assert os_memory.release_freed_memory() is True  # this Linux test machine runs glibc


def test_every_model_call_of_the_service_returns_freed_memory(tmp_path, monkeypatch):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
    from fastapi.testclient import TestClient

    from gradmem.serve import batcher

    calls: list[str] = []
    monkeypatch.setattr(batcher, "release_freed_memory", lambda: calls.append("trim") or True)
    with TestClient(create_app(make_engine(tmp_path), ServiceConfig())) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        assert len(calls) == 1  # after the write
        assert c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]}).status_code == 200
        assert c.get(f"/v1/memories/{mid}/reconstruction").status_code == 200
    assert len(calls) == 3


@pytest.mark.parametrize("cached", [True, False])
def test_the_reconstruction_budget_counts_the_positions_the_model_really_runs(tmp_path, cached):
    from gradmem.serve.budget import Budget
    from gradmem.serve.fidelity import greedy_reconstruction

    engine = make_engine(tmp_path)
    assert engine.decodes_incrementally  # the built-in decoder keeps a KV cache
    backbone, seen = engine.model.backbone, []
    for name in ("hidden", "prefill", "extend"):  # every way the decode can run the model
        real = getattr(backbone, name)
        setattr(backbone, name, lambda *a, real=real: seen.append(a[0].shape[0] * a[0].shape[1]) or real(*a))
    blocks = torch.randn(2, engine.block_vectors, backbone.hidden_size)  # two blocks of a 30-token memory
    greedy_reconstruction(engine.model, blocks, 15, cache=cached)
    # without a cache token t re-runs the 3 memory vectors and t tokens; with one, the block runs
    # once and each of the first 14 tokens once
    expected = 2 * (3 + 14) if cached else 2 * (15 * 3 + 105)
    assert sum(seen) == Budget.reconstruction_positions(30, 15, engine.block_vectors, cached=cached) == expected


def test_an_over_budget_reconstruction_is_refused_before_the_model_runs(tmp_path):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
    from fastapi.testclient import TestClient

    from gradmem.serve.budget import Budget

    engine = make_engine(tmp_path)
    (written,) = engine.write_texts([TEXT])
    # one block of 3 vectors and 15 tokens: with the KV cache it runs 3 + 14 = 17 positions (150
    # without one), so the limit is the cached cost
    cfg = ServiceConfig(budget=Budget(max_reconstruction_positions=16))
    with TestClient(create_app(engine, cfg)) as c:
        r = c.get(f"/v1/memories/{written.id}/reconstruction")
        assert r.status_code == 413 and "17 positions" in r.json()["detail"]
        assert c.get("/health").json()["jobs"] == 0


def test_a_reconstruction_past_its_deadline_stops_and_asks_are_answered(tmp_path):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
    from fastapi.testclient import TestClient

    engine = make_engine(tmp_path)
    (written,) = engine.write_texts([TEXT])
    backbone = engine.model.backbone
    real_extend, calls = backbone.extend, []

    def slow_extend(embeds, cache):  # 14 cached greedy steps of 0.1 s: 1.4 s of model work
        calls.append(embeds.shape[1])
        time.sleep(0.1)
        return real_extend(embeds, cache)

    backbone.extend = slow_extend
    with TestClient(create_app(engine, ServiceConfig(request_timeout_s=0.35))) as c:
        r = c.get(f"/v1/memories/{written.id}/reconstruction")
        assert r.status_code == 503 and "deadline" in r.json()["detail"]
        at_deadline = len(calls)
        time.sleep(0.6)
        assert len(calls) <= at_deadline + 1  # stopped at its next step, not run to its 15th
        backbone.extend = real_extend
        r = c.post(f"/v1/memories/{written.id}/ask", json={"questions": ["?!ab:"]})
        assert r.status_code == 200  # the model thread is free again


def test_a_write_past_its_deadline_stops_between_steps_and_stores_nothing(tmp_path):
    pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
    from fastapi.testclient import TestClient

    engine = make_engine(tmp_path)
    backbone = engine.model.backbone
    real_hidden, calls = backbone.hidden, []

    def slow_hidden(embeds):  # every forward of the write 0.1 s: 20 steps take > 2 s
        calls.append(embeds.shape[1])
        time.sleep(0.1)
        return real_hidden(embeds)

    backbone.hidden = slow_hidden
    with TestClient(create_app(engine, ServiceConfig(request_timeout_s=0.35))) as c:
        r = c.post("/v1/memories", json={"text": TEXT, "steps": 20})
        assert r.status_code == 503 and "deadline" in r.json()["detail"]
        at_deadline = len(calls)
        time.sleep(0.8)
        assert len(calls) <= at_deadline + 2  # stopped at its next step, not run to its 20th
        assert c.get("/v1/memories").json()["total"] == 0  # the stopped write stored nothing
        backbone.hidden = real_hidden
        assert c.post("/v1/memories", json={"text": TEXT}).status_code == 201  # the model thread is free again
