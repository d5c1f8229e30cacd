"""Hardening round 2, the page: a Content-Security-Policy and frame denial on every answer, and the
allowed Host list (`--allowed-hosts`)."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
from conftest import tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.cli.memory_commands import allowed_hosts  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.page_security import host_name  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402


def client(root, base_url="http://testserver", **limits) -> TestClient:
    engine = Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )
    return TestClient(create_app(engine, ServiceConfig(**limits)), base_url=base_url)


def test_pages_carry_a_policy_that_allows_only_their_own_script(tmp_path):
    with client(tmp_path) as c:
        for path in ("/", "/docs"):
            r = c.get(path)
            policy = r.headers["content-security-policy"]
            script = re.search(r"<script>(.*?)</script>", r.text, re.DOTALL).group(1)
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"script-src 'sha256-{digest}';" in policy and "unsafe-inline'; connect-src 'self'" in policy
            assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        for path in ("/", "/health", "/v1/memories", "/v1/memories/nope"):  # errors too
            headers = c.get(path).headers
            assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
            assert headers["referrer-policy"] == "no-referrer"


def test_a_host_outside_the_allowed_list_gets_400(tmp_path):
    with client(tmp_path, base_url="http://127.0.0.1:8000", allowed_hosts="localhost,127.0.0.1,::1") as c:
        assert c.get("/health").status_code == 200
        assert c.get("/health", headers={"host": "LOCALHOST:8000"}).status_code == 200
        assert c.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
        r = c.post("/v1/memories", json={"text": "!ab:cd!|"}, headers={"host": "evil.example:8000"})
        assert r.status_code == 400 and "--allowed-hosts" in r.json()["detail"]
        assert r.headers["x-frame-options"] == "DENY"
        assert c.get("/v1/memories").json()["total"] == 0  # the refused write never ran
    with client(tmp_path, allowed_hosts="*") as c:
        assert c.get("/health", headers={"host": "anything.example"}).status_code == 200
    with pytest.raises(ValueError, match="names no host"):
        ServiceConfig(allowed_hosts=" , ")


@pytest.mark.parametrize(
    "host, flag, expected",
    [
        ("127.0.0.1", None, "localhost,127.0.0.1,::1"),  # loopback: the loopback names by default
        ("0.0.0.0", None, None),
        ("127.0.0.1", "*", "*"),
        ("0.0.0.0", "mem.example", "mem.example"),
    ],
)
def test_serve_defaults_to_the_loopback_names_on_loopback(host, flag, expected):
    from types import SimpleNamespace

    assert allowed_hosts(SimpleNamespace(host=host, allowed_hosts=flag)) == expected


def test_host_names_lose_their_port():
    assert [host_name(h) for h in ("a.b:80", "[::1]:8000", "::1", "LocalHost")] == ["a.b", "::1", "::1", "localhost"]
