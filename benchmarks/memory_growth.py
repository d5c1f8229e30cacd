"""Resident memory of the service under writes of many distinct lengths (hardening, issue 29).

Every context length is legal, but a cache keyed on the sequence length, or freed blocks the C
allocator keeps, make the process grow with the number of distinct lengths. This drives the real
app in-process (FastAPI TestClient) with a small built-in decoder and prints the resident set size
(RSS, from /proc/self/status) before and after, and the attention mask cache's size.

    python benchmarks/memory_growth.py --lengths 200 --max-positions 2048
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servekit import rss_mib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, default=200, help="distinct context lengths written")
    parser.add_argument("--max-positions", type=int, default=2048, help="the model's window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from fastapi.testclient import TestClient

    from gradmem.backbones import LlamaBackbone, LlamaConfig
    from gradmem.core import attention
    from gradmem.methods import build_method
    from gradmem.methods.model import MemoryModel
    from gradmem.serve.budget import Budget
    from gradmem.serve.engine import Engine, EngineConfig
    from gradmem.serve.service import ServiceConfig, create_app
    from gradmem.serve.store import MemoryStore
    from gradmem.tasks.tokenizers import CharTokenizer

    torch.manual_seed(args.seed)
    backbone = LlamaBackbone(
        LlamaConfig(vocab_size=70, hidden_size=16, num_layers=2, num_heads=2, max_positions=args.max_positions)
    )
    model = MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": 2, "write": {"steps": 1}}))
    room = args.max_positions - 2
    rng = random.Random(args.seed)
    lengths = rng.sample(range(room // 2, room), args.lengths)
    with tempfile.TemporaryDirectory() as store:
        engine = Engine(model, CharTokenizer.for_kv(62), MemoryStore(store), EngineConfig(max_blocks=1))
        cfg = ServiceConfig(rate_burst=10**6, budget=Budget(max_write_tokens=room, max_write_token_steps=room))
        with TestClient(create_app(engine, cfg)) as client:
            client.post("/v1/memories", json={"text": "ab" * 8})  # warm up: libraries, first allocations
            before = rss_mib(os.getpid())
            peak = before
            for n in lengths:
                text = "".join(rng.choice("abcdefgh") for _ in range(n))
                response = client.post("/v1/memories", json={"text": text})
                assert response.status_code == 201, response.text
                peak = max(peak, rss_mib(os.getpid()))
            after = rss_mib(os.getpid())
    cache = getattr(attention, "_MASK_CACHE", {})
    cached = sum(t.numel() * t.element_size() for t in cache.values()) / 2**20
    print(
        json.dumps(
            {
                "distinct_lengths": args.lengths,
                "rss_before_mib": round(before, 1),
                "rss_peak_mib": round(peak, 1),
                "rss_after_mib": round(after, 1),
                "mask_cache_entries": len(cache),
                "mask_cache_mib": round(cached, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
