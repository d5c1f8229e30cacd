"""Hardening round 2, connections and the event loop: a deadline for request heads, a cap on
connections served at once, and a store listing that is paginated and runs off the event loop."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
import httpx  # noqa: E402
from conftest import serving, tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402


def make_engine(root) -> Engine:
    return Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )


@contextmanager
def served(root, **limits):
    cfg = ServiceConfig(**limits)
    with serving(create_app(make_engine(root), cfg), cfg) as port:
        yield port


def closed_within(conn: socket.socket, seconds: float) -> bool:
    """Whether the server closes `conn` (recv gives b"") within `seconds`."""
    conn.settimeout(seconds)
    try:
        while conn.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path):
    with served(tmp_path, header_timeout_s=0.5) as port:
        with (
            socket.create_connection(("127.0.0.1", port)) as silent,
            socket.create_connection(("127.0.0.1", port)) as slow,
        ):
            slow.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")  # and never the blank line
            started = time.perf_counter()
            assert closed_within(silent, 20) and closed_within(slow, 20)
            assert time.perf_counter() - started < 20
        with socket.create_connection(("127.0.0.1", port)) as kept:  # a finished request is answered whole
            kept.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert kept.recv(4096).startswith(b"HTTP/1.1 200")


def test_connections_beyond_the_cap_get_503_until_the_idle_ones_are_closed(tmp_path):
    with served(tmp_path, header_timeout_s=1.0, max_connections=3) as port:
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 503
            assert all(closed_within(conn, 20) for conn in idle)  # the header deadline frees them
            assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
        finally:
            for conn in idle:
                conn.close()


def test_the_listing_is_paginated_with_its_total(tmp_path):
    engine = make_engine(tmp_path)
    ids = [engine.write_texts([f"!a{i}:cd!|"])[0].id for i in range(5)]
    with TestClient(create_app(engine, ServiceConfig())) as c:
        first = c.get("/v1/memories", params={"limit": 2}).json()
        assert first["total"] == 5 and first["offset"] == 0 and first["limit"] == 2
        pages = [first] + [c.get("/v1/memories", params={"offset": o, "limit": 2}).json() for o in (2, 4)]
        assert [m["id"] for p in pages for m in p["memories"]] == ids  # oldest first, each once
        assert c.get("/v1/memories").json()["limit"] == 100
        for bad in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}):
            r = c.get("/v1/memories", params=bad)
            assert r.status_code == 422 and isinstance(r.json()["detail"], str), bad


def test_a_slow_listing_does_not_stall_the_event_loop(tmp_path):
    engine = make_engine(tmp_path)
    real_page = engine.store.page
    entered, released, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_page(offset, limit):  # a store of many thousands of memories on a slow disk
        entered.set()
        released.wait(30)  # held until /health has answered (or 30 s, if it cannot)
        finished.set()
        return real_page(offset, limit)

    engine.store.page = slow_page
    with TestClient(create_app(engine, ServiceConfig())) as c:
        lister = threading.Thread(target=lambda: c.get("/v1/memories"))
        lister.start()
        assert entered.wait(30)  # the listing is under way
        assert c.get("/health").status_code == 200
        # Answered while the listing still waited: a listing on the event loop would have held
        # /health until the page returned (no clock in this check, so a busy machine cannot fail it).
        assert not finished.is_set()
        released.set()
        lister.join(30)
