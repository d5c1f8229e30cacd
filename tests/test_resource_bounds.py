"""Hardening round 2, resources: the attention mask cache is bounded, freed memory goes back to the
OS after model work, and a reconstruction is bounded by its real cost and stops at its deadline."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from gradmem import attention
from gradmem.serve import os_memory
from gradmem.serve.engine import Engine, EngineConfig
from gradmem.serve.service_config import ServiceConfig
from gradmem.serve.store import MemoryStore
from gradmem.tokenizers import CharTokenizer

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
