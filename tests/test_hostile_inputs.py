"""Hostile and careless requests against the real app (FastAPI TestClient, tiny in-process model):
each must get a clear 4xx/5xx JSON answer quickly, never a 500 from bad input, a reset or a path."""

from __future__ import annotations

import errno
import json

import pytest
import torch

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
from conftest import tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.core import memory_file as memory_io  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

TEXT = "!ab:cd!!ef:gh!|"
JSON = {"content-type": "application/json"}


def make_client(root, engine_cfg=None, **limits) -> TestClient:
    engine = Engine(
        tiny_model(),
        CharTokenizer.for_kv(62),
        MemoryStore(root),
        engine_cfg or EngineConfig(chunk_tokens=100, max_blocks=700),
    )
    return TestClient(create_app(engine, ServiceConfig(**limits), checkpoint="tiny"))


def test_oversized_work_is_refused_before_any_tensor(tmp_path):
    with make_client(tmp_path) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        # 64 questions of 4,080 characters: once ~17 GB of attention; now refused by the question limit
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?" * 4080] * 64})
        assert r.status_code == 413 and "limit of 256 tokens per question" in r.json()["detail"]
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"] * 64, "max_new_tokens": 64})
        assert r.status_code == 413 and "over the limit of 4096" in r.json()["detail"]
        # 4,000 characters with 200 steps: once 310 s of a blocked model thread
        r = c.post("/v1/memories", json={"text": "ab" * 2000, "steps": 200})
        assert r.status_code == 413 and "limit of 2048 tokens per write" in r.json()["detail"]
        r = c.post("/v1/memories", json={"text": TEXT, "steps": 200})
        assert r.status_code == 413 and "limit of 50 steps" in r.json()["detail"]
        r = c.post("/v1/memories", json={"text": "ab" * 1000, "steps": 20})  # 2,000 tokens x 20 steps
        assert r.status_code == 413 and "40000 exceeds the limit of 16384 token-steps" in r.json()["detail"]
        # 65,000 characters inside the engine's block limit (70,000 tokens here): once a 4.3 GB allocation
        r = c.post("/v1/memories", json={"text": "a" * 65000})
        assert r.status_code == 413 and "limit of 2048 tokens" in r.json()["detail"]
        # only the first, legal write reached the model: the rest were refused before any tensor
        assert c.get("/health").json()["jobs"] == 1


def test_non_finite_numbers_and_bad_text_get_a_readable_422(tmp_path):
    with make_client(tmp_path) as c:
        for raw in (
            f'{{"text": "{TEXT}", "lr": NaN}}',
            f'{{"text": "{TEXT}", "lr": Infinity}}',
            f'{{"text": "{TEXT}", "target_loss": -Infinity}}',
            f'{{"text": "{TEXT}", "target_loss": NaN}}',
        ):
            r = c.post("/v1/memories", content=raw, headers=JSON)
            assert r.status_code == 422 and "finite" in r.json()["detail"], raw
        # a lone surrogate: the default handler echoed it and failed to encode its own answer
        r = c.post("/v1/memories", content=b'{"text": "ab\\ud800cd"}', headers=JSON)
        assert r.status_code == 422 and r.json()["detail"].startswith("text: ")  # pydantic or our validator refuses it
        r = c.post("/v1/memories", json={"text": " \n\t "})
        assert r.status_code == 422 and "whitespace" in r.json()["detail"]
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.post(f"/v1/memories/{mid}/ask", content=b'{"questions": ["?!ab:", "\\udfff"]}', headers=JSON)
        assert (
            r.status_code == 422
            and r.json()["detail"] == "questions: question 1 contains a lone surrogate (U+DFFF) at character 0"
        )
        assert c.post(f"/v1/memories/{mid}/ask", json={"questions": ["  "]}).status_code == 422
        r = c.post("/v1/memories", content=b'{"text": 12, "steps": "x"}', headers=JSON)
        assert r.status_code == 422 and "text:" in r.json()["detail"] and "steps:" in r.json()["detail"]
        assert '"x"' not in r.text and "12" not in r.text  # the input is never echoed


def test_unknown_fields_and_loose_counts_are_refused(tmp_path):
    # a typo such as "step" was ignored and the write ran with the default steps
    with make_client(tmp_path) as c:
        for body, field in (
            ({"text": TEXT, "step": 5}, "step"),
            ({"text": TEXT, "steps": True}, "steps"),
            ({"text": TEXT, "steps": "3"}, "steps"),
            ({"text": TEXT, "steps": 2.5}, "steps"),
        ):
            r = c.post("/v1/memories", json=body)
            assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: "), body
        mid = c.post("/v1/memories", json={"text": TEXT, "steps": 2}).json()["id"]
        for body, field in (
            ({"questions": ["?!ab:"], "max_tokens": 4}, "max_tokens"),
            ({"questions": ["?!ab:"], "max_new_tokens": True}, "max_new_tokens"),
        ):
            r = c.post(f"/v1/memories/{mid}/ask", json=body)
            assert r.status_code == 422 and r.json()["detail"].startswith(f"{field}: "), body
        assert c.get("/health").json()["jobs"] == 1  # only the legal write reached the model


def test_characters_outside_the_vocabulary_are_named(tmp_path):
    with make_client(tmp_path) as c:
        for text, named in (
            ("!ab:c\U0001f600!|", "U+1F600"),
            ("!ab:\u4e2d\u6587!|", "U+4E2D"),
            ("!ab:\x07d!|", "U+0007 '\\x07'"),
        ):
            r = c.post("/v1/memories", json={"text": text})
            assert r.status_code == 422 and "outside the model's vocabulary" in r.json()["detail"], text
            assert named in r.json()["detail"]
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!\u00e9b:"]})
        assert r.status_code == 422 and "U+00E9" in r.json()["detail"]
        # two texts differing only in unknown characters no longer share one memory: both are refused
        assert c.post("/v1/memories", json={"text": "!ab:c\u00e9!|"}).status_code == 422
        assert c.get("/v1/memories").json()["total"] == 1


def test_a_damaged_memory_is_skipped_and_reported(tmp_path):
    with make_client(tmp_path) as c:
        good = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        bad = c.post("/v1/memories", json={"text": "!xy:zw!|"}).json()["id"]
        side = tmp_path / "objects" / f"{bad}.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), "dtype": "complex1024"}))
        r = c.get("/v1/memories")
        assert r.status_code == 200 and [m["id"] for m in r.json()["memories"]] == [good]
        assert r.headers["x-damaged-memories"] == "1" and r.json()["damaged"] == 1
        r = c.get(f"/v1/memories/{bad}")
        assert r.status_code == 409 and "unusable fields: dtype" in r.json()["detail"]
        assert c.post(f"/v1/memories/{bad}/ask", json={"questions": ["?!xy:"]}).status_code == 409
        (tmp_path / "objects" / f"{good}.safetensors").write_bytes(b"\x00" * 40)  # truncated tensor
        r = c.post(f"/v1/memories/{good}/ask", json={"questions": ["?!ab:"]})
        assert r.status_code == 409 and "damaged" in r.json()["detail"]
        assert str(tmp_path) not in r.text


def test_a_diverged_write_is_not_stored_and_an_old_one_does_not_break_the_listing(tmp_path):
    engine = Engine(tiny_model(), CharTokenizer.for_kv(62), MemoryStore(tmp_path), EngineConfig(chunk_tokens=100))
    with TestClient(create_app(engine, ServiceConfig(), checkpoint="tiny")) as c:
        r = c.post("/v1/memories", json={"text": TEXT, "steps": 3, "lr": 1e-3})
        assert r.status_code == 201
        good = r.json()["id"]
        with torch.no_grad():  # a write head this large makes any inner step overflow
            engine.model.method.write_head.weight.mul_(1e30)
        r = c.post("/v1/memories", json={"text": "!xy:zw!|", "steps": 3, "lr": 100})
        assert r.status_code == 422 and "the write diverged" in r.json()["detail"]
        assert [m["id"] for m in c.get("/v1/memories").json()["memories"]] == [good]
        # a NaN stored by an older version: listed as damaged, not a 500 for every listing
        side = tmp_path / "objects" / f"{good}.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), "final_write_loss": float("nan")}))
        r = c.get("/v1/memories")
        assert r.status_code == 200 and r.json()["memories"] == [] and r.headers["x-damaged-memories"] == "1"


@pytest.mark.parametrize("code, status", [(errno.ENOSPC, 507), (errno.EROFS, 503), (errno.EACCES, 503)])
def test_store_errors_become_507_or_503_and_leave_nothing_behind(tmp_path, monkeypatch, code, status):
    with make_client(tmp_path) as c:

        def fails(tensors, path):
            raise OSError(code, "simulated", str(path))

        monkeypatch.setattr(memory_io, "save_file", fails)
        r = c.post("/v1/memories", json={"text": TEXT})
        assert r.status_code == status and r.json()["detail"].startswith("cannot write the memory: ")
        assert str(tmp_path) not in r.text and "simulated" not in r.text
        assert (r.headers.get("retry-after") is not None) == (status == 503)
        assert not list((tmp_path / "objects").iterdir())  # no context file left behind
        monkeypatch.undo()
        assert c.post("/v1/memories", json={"text": TEXT}).status_code == 201


def test_no_file_system_path_in_any_response(tmp_path):
    with make_client(tmp_path) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        bodies = [
            c.get(path).text
            for path in (
                "/version",
                "/health",
                "/v1/memories",
                f"/v1/memories/{mid}",
                "/v1/memories/" + "0" * 32,
                "/v1/memories/nope",
                "/docs",
            )
        ]
        bodies.append(c.delete("/v1/memories/" + "f" * 32).text)
        bodies.append(c.post("/v1/memories/" + "e" * 32 + "/ask", json={"questions": ["?"]}).text)
        assert all(str(tmp_path) not in body for body in bodies)
        assert c.get("/version").json()["checkpoint"] == "tiny" and "api_key" not in c.get("/version").json()["limits"]


def test_ids_with_a_trailing_newline_are_not_ids(tmp_path):
    with make_client(tmp_path) as c:
        mid = c.post("/v1/memories", json={"text": TEXT}).json()["id"]
        r = c.get(f"/v1/memories/{mid}%0A")
        assert r.status_code == 404 and "\\n" in r.json()["detail"]
        with pytest.raises(KeyError, match="not a memory id"):  # "$" in the pattern let this through
            MemoryStore(tmp_path).path(mid + "\n")
        assert c.delete(f"/v1/memories/{mid}%0A").status_code == 404 and c.get(f"/v1/memories/{mid}").status_code == 200


def test_the_api_docs_page_is_served_from_the_package(tmp_path):
    with make_client(tmp_path) as c:
        page = c.get("/docs")
        assert page.status_code == 200 and 'fetch("/openapi.json")' in page.text
        assert "http://" not in page.text and "https://" not in page.text and "cdn" not in page.text.lower()
        assert c.get("/redoc").status_code == 404
