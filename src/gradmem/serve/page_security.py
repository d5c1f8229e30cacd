"""Headers that protect the service's pages and clients, and the check of the Host a request names.

Every answer carries frame denial (`X-Frame-Options: DENY`, CSP `frame-ancestors 'none'`: no other
site can embed the page and trick a click), `X-Content-Type-Options: nosniff` and
`Referrer-Policy: no-referrer`. The HTML pages also get a Content-Security-Policy that lets them
load nothing from elsewhere and run only their own inline script, named by its SHA-256 (an
injected script would not match). With an allowed-hosts list, a request naming another Host gets
400: a web page that points its own domain at 127.0.0.1 (DNS rebinding) then cannot reach a
server on loopback from a victim's browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

LOOPBACK_HOSTS = "localhost,127.0.0.1,::1"  # what `gradmem serve` on loopback answers for by default
FIXED_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(html: str) -> str:
    """The CSP of a page of ours: its inline scripts by hash, inline styles (the pages use style
    attributes, which hashes cannot allow), requests to this server only, no frames, no plugins."""
    scripts = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in _SCRIPT.findall(html)
    )
    scripts = scripts or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def parse_hosts(text: str | None) -> frozenset[str] | None:
    """An allowed-hosts option ("localhost,127.0.0.1", "*" or None = any) as a set of lowercase names."""
    if text is None or text.strip() == "*":
        return None
    hosts = frozenset(h.strip().lower().strip("[]") for h in text.split(",") if h.strip())
    if not hosts:
        raise ValueError("allowed_hosts names no host; give host names separated by commas, or '*' for any")
    return hosts


def host_name(header: str) -> str:
    """The host of a Host header without its port: "[::1]:8000" -> "::1", "a.b:80" -> "a.b"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class PageSecurity:
    """ASGI middleware: refuse a Host outside `allowed` (None: any) with 400, add FIXED_HEADERS to
    every answer."""

    def __init__(self, app: Any, allowed: frozenset[str] | None) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.allowed is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if host_name(host) not in self.allowed:
                return await _refuse_host(send)

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *FIXED_HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _refuse_host(send: Any) -> None:
    body = json.dumps({"detail": "this server does not answer for that Host (see --allowed-hosts)"}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *FIXED_HEADERS]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
