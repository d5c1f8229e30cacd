"""What guards the HTTP service before and around its routes: error-to-status mapping, body size
and body-read time limits, per-client rate limiting and the API key.

STATUS is the one place where error types become HTTP status codes. Error bodies are always
`{"detail": text}` with the text made encodable, and never contain request input that cannot be
encoded, tracebacks or file-system paths (the errors raised for the service carry none).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gradmem.core.errors import (
    DamagedMemory,
    GradmemError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    OutOfDeviceMemory,
    Overloaded,
    StoreFull,
    StoreUnavailable,
    Unauthorized,
)

STATUS: dict[type, int] = {  # the first match along an error's MRO wins
    InvalidInput: 422,
    LimitExceeded: 413,
    NotFound: 404,
    DamagedMemory: 409,
    StoreFull: 507,
    StoreUnavailable: 503,
    Overloaded: 503,
    OutOfDeviceMemory: 503,  # the GPU was full for this request; a smaller one or a retry may fit
    Unauthorized: 401,
}
RETRY_AFTER = {503: "5"}  # seconds a client should wait before retrying


def status_of(err: BaseException) -> int:
    """The HTTP status of an error: its type's entry in STATUS, else 500."""
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def safe_text(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (lone surrogates) escaped, so a response never fails."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = {**({"Retry-After": RETRY_AFTER[status]} if status in RETRY_AFTER else {}), **(headers or {})}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": safe_text(detail)}, status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors for gradmem's typed errors, validation failures and anything unexpected."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # The default handler echoes each error's `input`: a NaN or a lone surrogate there makes
        # the response itself fail (500 or a reset). Only the location and message are returned.
        parts = []
        for item in err.errors():
            where = ".".join(str(x) for x in item.get("loc", ()) if x != "body") or "body"
            message = str(item.get("msg", "invalid"))
            parts.append(f"{where}: {message.removeprefix('Value error, ')}")  # pydantic's prefix for our validators
        return error_response(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        headers = dict(err.headers or {})
        if err.status_code == 405:  # Starlette names the methods of the first route matching the path only
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(err.status_code, str(err.detail), headers)

    @app.exception_handler(GradmemError)
    async def typed(_: Request, err: GradmemError) -> JSONResponse:
        return error_response(status_of(err), str(err))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        # A bug: the server logs its traceback; the client sees no message that could hold a path.
        return error_response(500, "internal error (see the server log)")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on the request's path (GET and DELETE of one
    path are two routes)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})  # a path match, whatever the method
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


class BodyGuard:
    """ASGI middleware: refuse bodies over `limit` bytes with 413 (by header or while streaming) and
    bodies that do not arrive within `timeout_s` with 408, so a slow client cannot hold a request."""

    def __init__(self, app: Any, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _answer(send, 413, f"request body larger than the limit of {self.limit} bytes")
        seen, responded, complete = 0, False, False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def guarded_receive() -> dict:
            nonlocal seen, responded, complete
            if complete or responded:  # after the body: waiting for a disconnect is not a body read
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                responded = True
                await _answer(send, 408, f"request body not received within {self.timeout_s:g} s")
                return {"type": "http.disconnect"}
            seen += len(message.get("body", b""))
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.limit:  # a chunked body without a content-length
                responded = True
                await _answer(send, 413, f"request body larger than the limit of {self.limit} bytes")
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded_send(message: dict) -> None:
            if not responded:
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not responded:
                raise


async def _answer(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TokenBuckets:
    """Per-client token buckets: `rate` tokens per second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        """0 if the request may go ahead, else the seconds until it could."""
        now = time.monotonic()
        if len(self.buckets) > 10000:  # forget clients whose bucket has refilled: they are back to a full burst
            self.buckets = {c: (t, s) for c, (t, s) in self.buckets.items() if t + (now - s) * self.rate < self.burst}
        tokens, last = self.buckets.get(client, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            return 0.0
        self.buckets[client] = (tokens, now)
        return (1 - tokens) / self.rate


def client_key(request: Request) -> str:
    """The rate-limit key: the connection's peer address as the ASGI server reports it. Forwarding
    headers are not read here; `gradmem serve --trust-proxy` lets uvicorn apply them (from the
    proxies it trusts) before this point, and without it they change nothing."""
    return request.client.host if request.client else "unknown"


def presented_key(request: Request) -> str | None:
    """The API key a request carries: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def check_key(request: Request, api_key: str) -> None:
    """Unauthorized unless the request carries `api_key` (compared in constant time)."""
    given = presented_key(request)
    if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), api_key.encode()):
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
