"""The HTTP service in-process: memories CRUD, ask, streaming writes, limits, batching, restarts."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
from conftest import tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.serve.budget import Budget  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.fidelity import RECONSTRUCTION_NOTE  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

TEXT = "!ab:cd!!ef:gh!|"


def make_engine(root, **cfg):
    return Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2, **cfg)
    )


def client(root, **limits):
    return TestClient(create_app(make_engine(root), ServiceConfig(**limits), checkpoint="tiny"))


def test_memory_lifecycle_and_answers(tmp_path):
    with client(tmp_path) as c:
        r = c.post("/v1/memories", json={"text": TEXT})
        assert r.status_code == 201 and r.json()["created"]
        memory = r.json()
        assert memory["context_tokens"] == 15 and memory["memory_bytes"] < memory["kv_cache_bytes"]
        assert c.post("/v1/memories", json={"text": TEXT}).json()["created"] is False
        assert [m["id"] for m in c.get("/v1/memories").json()["memories"]] == [memory["id"]]
        assert c.get(f"/v1/memories/{memory['id']}").json()["tensor_sha256"] == memory["tensor_sha256"]
        r = c.post(f"/v1/memories/{memory['id']}/ask", json={"questions": ["?!ab:", "?!ef:"], "max_new_tokens": 4})
        assert r.status_code == 200
        answers = [a["answer"] for a in r.json()["answers"]]
        engine = make_engine(tmp_path / "other")
        [written] = engine.write_texts([TEXT])
        assert answers == engine.ask([(written.id, "?!ab:"), (written.id, "?!ef:")], 4)
        assert c.delete(f"/v1/memories/{memory['id']}").status_code == 204
        assert c.delete(f"/v1/memories/{memory['id']}").status_code == 404
        assert c.post(f"/v1/memories/{memory['id']}/ask", json={"questions": ["?!ab:"]}).status_code == 404
        assert c.get("/v1/memories/not-an-id").status_code == 404


def test_streamed_write_reports_every_step(tmp_path):
    with client(tmp_path) as c:
        r = c.post("/v1/memories?stream=true", json={"text": TEXT, "steps": 3})
        assert r.status_code == 201 and r.headers["content-type"].startswith("text/event-stream")
        events = [
            (block.split("\n")[0][len("event: ") :], json.loads(block.split("\n")[1][len("data: ") :]))
            for block in r.text.strip().split("\n\n")
        ]
        assert [kind for kind, _ in events] == ["step"] * 4 + ["done"]  # before steps 0..2, then after the last
        done = events[-1][1]
        assert [d["loss"] for _, d in events[:3]] == pytest.approx(done["write_loss"])
        assert events[3][1]["loss"] == pytest.approx(done["final_write_loss"])


def test_limits_give_clear_4xx(tmp_path):
    with client(tmp_path, max_body_bytes=600, max_questions=2, rate_per_second=1, rate_burst=8) as c:
        r = c.post(
            "/v1/memories", content=json.dumps({"text": "a" * 700}), headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "600 bytes" in r.json()["detail"]
        chunks = iter([b'{"text": "'] + [b"a" * 100] * 9)  # chunked: no content-length to check up front
        r = c.post("/v1/memories", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "600 bytes" in r.json()["detail"]
        r = c.post("/v1/memories", json={"text": "a" * 40})
        assert r.status_code == 413 and "limit of 30 tokens" in r.json()["detail"]
        assert c.post("/v1/memories", json={"text": ""}).status_code == 422
        assert c.post("/v1/memories", json={"text": TEXT, "steps": -1}).status_code == 422
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"] * 3})
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]
        codes = [c.get("/v1/memories").status_code for _ in range(6)]
        assert codes[-1] == 429 and set(codes) == {200, 429}
        r = c.get("/v1/memories")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
        assert c.get("/health").status_code == 200  # health is never rate limited


def test_concurrent_requests_are_batched(tmp_path):
    with client(tmp_path, batch_wait_ms=200, rate_burst=1000) as c:
        ids = [c.post("/v1/memories", json={"text": f"!a{i}:cd!|"}).json()["id"] for i in range(3)]
        results: dict[int, list[str]] = {}

        def ask(i: int) -> None:
            r = c.post(f"/v1/memories/{ids[i % 3]}/ask", json={"questions": [f"?!a{i % 3}:"], "max_new_tokens": 3})
            results[i] = [a["answer"] for a in r.json()["answers"]]

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        health = c.get("/health").json()
        assert health["largest_batch"] > 1, health
        engine = make_engine(tmp_path)  # same store: the memories are there
        for i in range(8):
            assert results[i] == engine.ask([(ids[i % 3], f"?!a{i % 3}:")], 3)


def test_store_survives_a_restart_and_the_api_is_described(tmp_path):
    with client(tmp_path) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        before = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]}).json()
    with client(tmp_path) as c:  # a new process would see the same directory
        assert [m["id"] for m in c.get("/v1/memories").json()["memories"]] == [mid]
        assert c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]}).json() == before
        schema = c.get("/openapi.json").json()
        assert {
            "/v1/memories",
            "/v1/memories/{memory_id}",
            "/v1/memories/{memory_id}/ask",
            "/v1/memories/{memory_id}/reconstruction",
            "/health",
            "/version",
        } <= set(schema["paths"])
        version = c.get("/version").json()
        assert version["memory_format"] == 2 and version["max_context_tokens"] == 30
        assert version["example"] == {"context": "", "questions": []}  # an engine built without its task's text
        assert "<canvas" in c.get("/").text


def test_reconstruction_route(tmp_path):
    with client(tmp_path) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.get(f"/v1/memories/{mid}/reconstruction")
        assert r.status_code == 200
        report = r.json()
        expected = make_engine(tmp_path).reconstruct(mid)  # same store and seed: the same decode
        assert report["id"] == mid and report["context"] == TEXT and report["blocks"] == 1
        assert report["reconstruction"] == expected["reconstruction"] and len(report["reconstruction"]) > 0
        assert report["token_accuracy"] == pytest.approx(expected["token_accuracy"])
        assert 0 <= report["teacher_forced_accuracy"] <= 1
        assert report["reconstruction_note"] == RECONSTRUCTION_NOTE
        assert report["memory_bytes"] < report["kv_cache_bytes"]
        assert c.get("/v1/memories/" + "e" * 32 + "/reconstruction").status_code == 404
        r = c.get("/v1/memories/not-an-id/reconstruction")
        assert r.status_code == 404 and r.json() == c.get("/v1/memories/not-an-id").json()
    # 15 decode tokens over a budget of 10: refused before the model runs
    with client(tmp_path, budget=Budget(max_ask_tokens=10)) as c:
        r = c.get(f"/v1/memories/{mid}/reconstruction")
        assert r.status_code == 413 and "max_ask_tokens" in r.json()["detail"]


def test_reconstruction_needs_the_key_when_reads_are_protected(tmp_path):
    with client(tmp_path, api_key="k", protect_reads=True) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}, headers={"x-api-key": "k"}).json()["id"]
        assert c.get(f"/v1/memories/{mid}/reconstruction").status_code == 401
        assert c.get(f"/v1/memories/{mid}/reconstruction", headers={"x-api-key": "no"}).status_code == 401
        r = c.get(f"/v1/memories/{mid}/reconstruction", headers={"authorization": "Bearer k"})
        assert r.status_code == 200 and r.json()["context"] == TEXT


def test_reconstruction_runs_on_the_model_thread_under_the_deadline(tmp_path):
    engine = make_engine(tmp_path)
    threads = []

    def slow(memory_id, context=None, should_stop=None):
        threads.append(threading.current_thread().name)
        time.sleep(0.5)
        return {}

    (written,) = engine.write_texts([TEXT])  # before the server: a write under a 0.1 s deadline is flaky
    mid = written.id
    engine.reconstruct = slow
    with TestClient(create_app(engine, ServiceConfig(request_timeout_s=0.1))) as c:
        r = c.get(f"/v1/memories/{mid}/reconstruction")
        assert r.status_code == 503 and "deadline" in r.json()["detail"]
        assert c.get("/health").json()["timed_out"] == 1
    assert threads == [threads[0]] and threads[0].startswith("gradmem-model")  # the batcher's model thread


def test_version_shows_the_tasks_example_and_questions_take_its_layout(tmp_path):
    from gradmem.serve.engine import TaskText
    from gradmem.tasks.babi import BabiTask

    task = BabiTask(tokenizer={"type": "word", "vocab": "babi"})
    engine = Engine(tiny_model(), task.tokenizer, MemoryStore(tmp_path), text=TaskText.of(task))
    story, questions = task.example()
    with TestClient(create_app(engine, ServiceConfig(), checkpoint="babi")) as c:
        assert c.get("/version").json()["example"] == {"context": story, "questions": questions}
        memory = c.post("/v1/memories", json={"text": story}).json()
        r = c.post(f"/v1/memories/{memory['id']}/ask", json={"questions": questions[:1], "max_new_tokens": 2})
        assert r.status_code == 200
        assert r.json()["answers"][0]["answer"] == engine.ask([(memory["id"], questions[0])], 2)[0]
        r = c.post(f"/v1/memories/{memory['id']}/ask", json={"questions": ["Where is Zorro?"]})
        assert r.status_code == 422 and "'Zorro'" in r.text
