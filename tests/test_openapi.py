"""Hardening round 2, the API contract: /openapi.json documents every status a route answers, with
the one error body the server really sends, the request constraints it enforces, and 405 names
every method of a path."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
from conftest import tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.serve.budget import Budget  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig, TaskText  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.babi import BabiTask  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

TEXT = "!ab:cd!!ef:gh!|"
ERROR = {"$ref": "#/components/schemas/ErrorBody"}


def client(root, **limits) -> TestClient:
    engine = Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )
    return TestClient(create_app(engine, ServiceConfig(**limits)), base_url="http://127.0.0.1")


def operation_of(schema: dict, method: str, url: str) -> dict | None:
    """The documented operation a request went to (path templates matched against its path)."""
    path = url.split("?")[0]
    for template, operations in schema["paths"].items():
        if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), path) and method.lower() in operations:
            return operations[method.lower()]
    return None


def test_every_error_is_documented_with_the_one_error_body(tmp_path):
    with client(tmp_path) as c:
        schema = c.get("/openapi.json").json()
    assert not {"HTTPValidationError", "ValidationError"} & set(schema["components"]["schemas"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == ERROR, (method, path, status)
            if path.startswith("/v1/memories/{memory_id}"):
                assert "404" in operation["responses"], (method, path)
    write = schema["components"]["schemas"]["WriteBody"]["properties"]["text"]
    assert write["minLength"] == 1 and not re.search(write["pattern"], " \n ")  # whitespace-only is refused: said so
    ask = schema["components"]["schemas"]["AskBody"]["properties"]["questions"]
    assert ask["minItems"] == 1 and not re.search(ask["items"]["pattern"], " \t")
    listing = {p["name"]: p["schema"] for p in schema["paths"]["/v1/memories"]["get"]["parameters"]}
    assert listing["limit"]["maximum"] == 1000 and listing["offset"]["minimum"] == 0


def test_what_the_server_answers_is_what_the_schema_says(tmp_path):
    """Good and bad requests of every kind: each status must be documented for its operation and
    each error body must be exactly {"detail": text}."""
    with client(
        tmp_path,
        api_key="k",
        allowed_hosts="127.0.0.1",
        rate_burst=60,
        rate_per_second=0.01,
        budget=Budget(max_ask_tokens=12),
    ) as c:
        schema = c.get("/openapi.json").json()
        key = {"x-api-key": "k"}
        mid = c.post("/v1/memories", json={"text": TEXT}, headers=key).json()["id"]
        bad = c.post("/v1/memories", json={"text": "!xy:zw!|"}, headers=key).json()["id"]
        side = tmp_path / "objects" / f"{bad}.json"
        side.write_text(json.dumps({**json.loads(side.read_text()), "dtype": "complex"}))
        requests = [
            ("POST", "/v1/memories", {"json": {"text": "!qq:rr!|"}, "headers": key}),  # 201
            ("POST", "/v1/memories", {"json": {"text": TEXT}}),  # 401
            ("POST", "/v1/memories", {"json": {"text": "  "}, "headers": key}),  # 422
            ("POST", "/v1/memories", {"json": {"text": "a" * 40}, "headers": key}),  # 413
            ("POST", "/v1/memories", {"content": b"{", "headers": {**key, "content-type": "application/json"}}),
            ("POST", "/v1/memories", {"json": {"text": TEXT}, "headers": {**key, "host": "evil.example"}}),
            ("GET", "/v1/memories", {}),
            ("GET", "/v1/memories?limit=0", {}),
            ("GET", f"/v1/memories/{mid}", {}),
            ("GET", f"/v1/memories/{bad}", {}),  # 409
            ("GET", "/v1/memories/nope", {}),  # 404
            ("POST", f"/v1/memories/{mid}/ask", {"json": {"questions": ["?!ab:"]}}),
            ("POST", f"/v1/memories/{mid}/ask", {"json": {"questions": ["?!ab:"] * 3}}),  # 413
            ("POST", f"/v1/memories/{mid}/ask", {"json": {"questions": []}}),  # 422
            ("POST", "/v1/memories/" + "e" * 32 + "/ask", {"json": {"questions": ["?!ab:"]}}),  # 404
            ("GET", f"/v1/memories/{mid}/reconstruction", {}),  # 413: 15 decode tokens > 12
            ("GET", f"/v1/memories/{bad}/reconstruction", {}),
            ("DELETE", f"/v1/memories/{mid}", {}),  # 401
            ("DELETE", "/v1/memories/" + "f" * 32, {"headers": key}),  # 404
            ("DELETE", f"/v1/memories/{mid}", {"headers": key}),  # 204
            ("GET", "/health", {}),
            ("GET", "/version", {}),
        ] + [("GET", "/v1/memories", {})] * 40  # past the burst: 429
        seen = set()
        for method, url, options in requests:
            r = c.request(method, url, **options)
            operation = operation_of(schema, method, url)
            assert operation is not None and str(r.status_code) in operation["responses"], (method, url, r.status_code)
            if r.status_code >= 400:
                assert set(r.json()) == {"detail"} and isinstance(r.json()["detail"], str), (method, url)
            seen.add(r.status_code)
        assert {200, 201, 204, 400, 401, 404, 409, 413, 422, 429} <= seen


def test_405_names_every_method_of_the_path(tmp_path):
    with client(tmp_path) as c:
        r = c.put("/v1/memories/" + "a" * 32)
        assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET" and set(r.json()) == {"detail"}
        assert c.patch("/v1/memories").headers["allow"] == "GET, POST"
        assert c.post(f"/v1/memories/{'a' * 32}/reconstruction").headers["allow"] == "GET"


def test_the_schema_carries_this_servers_limits(tmp_path):
    budget = Budget(max_write_steps=7, max_question_tokens=20)
    with client(tmp_path, max_questions=3, max_new_tokens=9, budget=budget) as c:
        bodies = c.get("/openapi.json").json()["components"]["schemas"]
    write, ask = bodies["WriteBody"]["properties"], bodies["AskBody"]["properties"]
    assert write["steps"]["anyOf"][0]["maximum"] == 7 and ask["max_new_tokens"]["anyOf"][0]["maximum"] == 9
    assert ask["questions"]["maxItems"] == 3
    # a character-level model: its alphabet is the pattern, its token limits are character limits
    assert write["text"]["maxLength"] == 30 and ask["questions"]["items"]["maxLength"] == 20
    pattern = re.compile(write["text"]["pattern"])
    assert pattern.search("!ab:cd!|") and not pattern.search("ab cd") and not pattern.search("é")
    with client(tmp_path) as c:
        r = c.post("/v1/memories", json={"text": "ab cd"})  # what the pattern refuses, the server refuses
        assert r.status_code == 422 and "vocabulary" in r.json()["detail"]
        assert c.post("/v1/memories", json={"text": TEXT, "steps": 2.0}).status_code == 201  # 2.0 is a JSON integer
        assert c.post("/v1/memories", json={"text": TEXT, "target_loss": False}).status_code == 422


def test_a_word_model_publishes_no_vocabulary_pattern(tmp_path):
    """Which texts a word vocabulary encodes is no regular expression: the schema keeps "not blank"
    and leaves token counts to the documented 413."""
    task = BabiTask(tokenizer={"type": "word", "vocab": "babi"})
    engine = Engine(tiny_model(), task.tokenizer, MemoryStore(tmp_path), text=TaskText.of(task))
    with TestClient(create_app(engine, ServiceConfig()), base_url="http://127.0.0.1") as c:
        text = c.get("/openapi.json").json()["components"]["schemas"]["WriteBody"]["properties"]["text"]
    assert text["pattern"] == r"\S" and "maxLength" not in text
