"""Access and load control of the service: the API key, rate limiting on the socket peer (a real
uvicorn on loopback, with and without --trust-proxy), slow bodies, deadlines and fair batching."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
import httpx  # noqa: E402
from conftest import serving, tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.serve.batcher import Batcher  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

TEXT = "!ab:cd!!ef:gh!|"


def make_engine(root) -> Engine:
    return Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )


def test_writes_and_deletes_need_the_key(tmp_path):
    cfg = ServiceConfig(api_key="s3cret")
    with TestClient(create_app(make_engine(tmp_path), cfg)) as c:
        r = c.post("/v1/memories", json={"text": TEXT})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["detail"]
        assert c.post("/v1/memories", json={"text": TEXT}, headers={"authorization": "Bearer s3cre"}).status_code == 401
        r = c.post("/v1/memories", json={"text": TEXT}, headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 201
        mid = r.json()["id"]
        assert c.get("/v1/memories").status_code == 200  # reads stay open unless protect_reads
        assert c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]}).status_code == 200
        assert c.delete(f"/v1/memories/{mid}").status_code == 401 and c.get(f"/v1/memories/{mid}").status_code == 200
        assert c.delete(f"/v1/memories/{mid}", headers={"x-api-key": "s3cret"}).status_code == 204
        assert c.get("/version").json()["limits"]["api_key_required"] is True and "s3cret" not in c.get("/version").text
    with TestClient(create_app(make_engine(tmp_path), ServiceConfig(api_key="k", protect_reads=True))) as c:
        assert c.get("/v1/memories").status_code == 401 and c.get("/health").status_code == 200
        assert c.get("/v1/memories", headers={"authorization": "bearer k"}).status_code == 200


def test_rate_limit_is_keyed_on_the_socket_peer_unless_a_proxy_is_trusted(tmp_path):
    app = create_app(make_engine(tmp_path), ServiceConfig(rate_per_second=0.5, rate_burst=3))
    with serving(app) as port:
        codes = [
            httpx.get(f"http://127.0.0.1:{port}/v1/memories", headers={"x-forwarded-for": f"10.0.0.{i}"}).status_code
            for i in range(6)
        ]
    assert codes[:3] == [200] * 3 and codes[3:] == [429] * 3  # a new forwarded address per request changes nothing
    app = create_app(make_engine(tmp_path), ServiceConfig(rate_per_second=0.5, rate_burst=3))
    with serving(app, trust_proxy="127.0.0.1") as port:  # behind a proxy on loopback: its header names the client
        codes = [
            httpx.get(f"http://127.0.0.1:{port}/v1/memories", headers={"x-forwarded-for": f"10.0.0.{i}"}).status_code
            for i in range(6)
        ]
    assert codes == [200] * 6


def test_a_slow_body_gets_408_instead_of_holding_the_connection(tmp_path):
    app = create_app(make_engine(tmp_path), ServiceConfig(body_timeout_s=0.5))
    with serving(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            started = time.perf_counter()
            conn.sendall(
                b"POST /v1/memories HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"text": '
            )  # 10 of the 100 declared bytes, then nothing
            answer = b""
            while chunk := conn.recv(4096):  # the server closes the connection after its answer,
                answer += chunk  # which may come in more than one segment (headers, then body)
            answer = answer.decode()
            seconds = time.perf_counter() - started
        # the bound is loose on purpose: a loaded CI machine may be slow, but a held connection never answers
        assert answer.startswith("HTTP/1.1 408") and "not received within 0.5 s" in answer and seconds < 30
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200  # the server is still up


def test_a_request_past_its_deadline_gets_503(tmp_path):
    engine = make_engine(tmp_path)
    slow_ask = engine.ask

    def ask(items, max_new_tokens=None):
        time.sleep(0.6)
        return slow_ask(items, max_new_tokens)

    engine.ask = ask
    with TestClient(create_app(engine, ServiceConfig(request_timeout_s=0.3))) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]})
        assert r.status_code == 503 and "0.3 s deadline" in r.json()["detail"] and r.headers["retry-after"] == "5"
        time.sleep(0.5)
        assert c.get("/health").json()["timed_out"] == 1


class FakeEngine:
    """Records the order of model calls; each takes `seconds`."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.calls: list[tuple[str, int]] = []
        self.seconds = seconds

    def ask(self, items, max_new_tokens=None):
        self.calls.append(("ask", len(items)))
        time.sleep(self.seconds)
        return ["x"] * len(items)

    def write_texts(self, texts, steps=None, lr=None, target_loss=None, on_step=None, should_stop=None):
        self.calls.append(("write", len(texts)))
        time.sleep(self.seconds)
        return [SimpleNamespace(id=t) for t in texts]


def test_writes_cannot_starve_asks_and_batches_respect_the_token_budget():
    async def scenario() -> FakeEngine:
        engine = FakeEngine()
        batcher = Batcher(engine, max_batch=32, wait_ms=1, max_ask_tokens=100, max_write_tokens=100)
        batcher.start()
        writes = [asyncio.create_task(batcher.write(f"t{i}", None, None, None, cost=100)) for i in range(5)]
        await asyncio.sleep(0.01)  # the first write is running, four more wait
        asks = [asyncio.create_task(batcher.ask("m", ["q"], None, cost=40)) for _ in range(5)]
        await asyncio.gather(*writes, *asks)
        await batcher.stop()
        return engine

    calls = asyncio.run(scenario()).calls
    assert calls[0] == ("write", 1)  # a write fills the whole budget: one per batch
    assert calls[1] == ("ask", 2)  # the asks go next, not after the queued writes; 2 x 40 <= 100 < 3 x 40
    assert [kind for kind, _ in calls] == ["write", "ask", "write", "ask", "write", "ask", "write", "write"]
    assert sum(n for kind, n in calls if kind == "ask") == 5


def test_a_full_queue_is_refused_at_once():
    async def scenario() -> tuple[int, str]:
        batcher = Batcher(FakeEngine(0.3), max_batch=1, wait_ms=0, max_queue=2)
        batcher.start()
        first = [asyncio.create_task(batcher.ask("m", ["q"], None))]
        await asyncio.sleep(0.05)  # the first one runs
        first += [asyncio.create_task(batcher.ask("m", ["q"], None)) for _ in range(2)]
        await asyncio.sleep(0.01)  # two wait: the queue is full
        try:
            await batcher.ask("m", ["q"], None)
            message = ""
        except RuntimeError as err:
            message = str(err)
        await asyncio.gather(*first)
        await batcher.stop()
        return batcher.stats.refused, message

    refused, message = asyncio.run(scenario())
    assert refused == 1 and "busy" in message


class FailingEngine(FakeEngine):
    """Fails every model call that contains the text or question "bad"."""

    def ask(self, items, max_new_tokens=None):
        self.calls.append(("ask", len(items)))
        if any(question == "bad" for _, question in items):
            raise ValueError("bad question")
        return [f"answer to {question}" for _, question in items]

    def write_texts(self, texts, steps=None, lr=None, target_loss=None, on_step=None, should_stop=None):
        self.calls.append(("write", len(texts)))
        if "bad" in texts:
            raise ValueError("bad text")
        return [SimpleNamespace(id=t) for t in texts]


@pytest.mark.parametrize("kind", ["ask", "write"])
def test_a_failing_batch_is_retried_one_by_one_so_only_the_bad_request_fails(kind):
    async def scenario() -> tuple[FailingEngine, list]:
        engine = FailingEngine()
        batcher = Batcher(engine, max_batch=8, wait_ms=50)
        batcher.start()
        payloads = ["a", "bad", "c"]
        if kind == "ask":
            jobs = [batcher.ask("m", [p], None) for p in payloads]
        else:
            jobs = [batcher.write(p, None, None, None) for p in payloads]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await batcher.stop()
        return engine, results

    engine, results = asyncio.run(scenario())
    assert engine.calls == [(kind, 3), (kind, 1), (kind, 1), (kind, 1)]  # the batch, then each request alone
    good = [["answer to a"], ["answer to c"]] if kind == "ask" else ["a", "c"]
    assert [r if kind == "ask" else r.id for r in (results[0], results[2])] == good
    assert isinstance(results[1], ValueError) and str(results[1]) == f"bad {'question' if kind == 'ask' else 'text'}"
