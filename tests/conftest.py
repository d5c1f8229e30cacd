"""Shared fixtures: tiny models built in-process and seeded key-value data."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import torch

from gradmem.backbones import LlamaBackbone, LlamaConfig
from gradmem.core.batch import collate
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel
from gradmem.tasks.kv import KVConfig, generate_kv

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@contextmanager
def benchmarks_on_path() -> Iterator[None]:
    """Make the scripts in benchmarks/ (not a package) importable, for the duration of the block only."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))


TINY = dict(vocab_size=70, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=128)


@contextmanager
def serving(app, cfg=None, trust_proxy: str | None = None) -> Iterator[int]:
    """Run `app` on a free loopback port in a thread, under the uvicorn configuration `gradmem
    serve` itself uses (header timeout, connection cap, proxy trust); yields the port."""
    import uvicorn

    from gradmem.serve.service import server_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, trust_proxy, cfg=cfg))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    try:
        while not server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)


def live_server(engine, cfg=None) -> tuple[str, Callable[[], None]]:
    """The service for `engine` served as by `serving`, for tests that stop it themselves: (its
    URL, a function that stops it). Needs the 'serve' extra."""
    from gradmem.serve.service import ServiceConfig, create_app

    cfg = cfg or ServiceConfig()
    stack = ExitStack()
    port = stack.enter_context(serving(create_app(engine, cfg), cfg))
    return f"http://127.0.0.1:{port}", stack.close


def tiny_model(method: str = "gradmem", dtype: torch.dtype = torch.float32, seed: int = 0, **method_cfg) -> MemoryModel:
    torch.manual_seed(seed)
    backbone = LlamaBackbone(LlamaConfig(**TINY))
    if method == "gradmem":
        method_cfg.setdefault("num_memory", 3)
    model = MemoryModel(backbone, build_method(method, backbone, method_cfg))
    return model.to(dtype)


def tiny_run_spec(**train) -> dict:
    """A run spec: the tiny decoder on 2-pair key-value retrieval, GradMem m = 2, K = 1, these train settings."""
    return {
        "task": {"name": "kv", "num_pairs": 2},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": train,
    }


def kv_batch(n: int = 4, pairs: int = 2, seed: int = 0):
    return collate(generate_kv(KVConfig(num_pairs=pairs), n, seed=seed))


@pytest.fixture
def batch():
    return kv_batch()
