"""The HTTP service: a FastAPI app that writes texts into memories and answers questions from them.

    POST   /v1/memories              {"text": ...} -> 201 memory (?stream=true: server-sent events,
                                     one `step` event per write step, then `done`)
    GET    /v1/memories              all memories          GET /v1/memories/{id}   one memory
    DELETE /v1/memories/{id}         204                   POST /v1/memories/{id}/ask {"questions": [...]}
    GET    /health, /version         GET /  the web page   GET /docs, /openapi.json  the API schema

Model calls from concurrent requests go through one `Batcher`. Requests larger than
`max_body_bytes` get 413, more than `rate_per_second` (token bucket per client) get 429 with
Retry-After. Memories live in the engine's on-disk store, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from gradmem.batcher import Batcher
from gradmem.engine import Engine
from gradmem.memory_io import FORMAT_VERSION

EXEMPT = ("/health", "/version", "/", "/docs", "/openapi.json")  # never rate limited


@dataclass
class ServiceConfig:
    """Limits and batching of the service."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_questions: int = 64  # questions per ask request
    max_new_tokens: int = 64  # the most answer tokens a request may ask for
    rate_per_second: float = 50.0  # sustained requests per second per client
    rate_burst: int = 100  # requests a client may send at once
    max_batch: int = 32  # most requests run as one model batch
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company

    def __post_init__(self) -> None:
        if min(self.max_body_bytes, self.max_questions, self.max_new_tokens, self.rate_burst, self.max_batch) < 1:
            raise ValueError("service limits must be >= 1")
        if self.rate_per_second <= 0 or self.batch_wait_ms < 0:
            raise ValueError("rate_per_second must be > 0 and batch_wait_ms >= 0")


class WriteBody(BaseModel):
    text: str = Field(min_length=1, description="the context to write into memory")
    steps: int | None = Field(None, ge=0, le=200, description="maximum WRITE steps (default: the checkpoint's)")
    lr: float | None = Field(None, gt=0, le=100, description="inner learning rate (default: the checkpoint's)")
    target_loss: float | None = Field(None, ge=0, description="stop each chunk once its reconstruction loss <= this")


class AskBody(BaseModel):
    questions: list[str] = Field(min_length=1, description="one or many questions about the memory")
    max_new_tokens: int | None = Field(None, ge=1, description="answer length in tokens")


class Answers(BaseModel):
    id: str
    answers: list[dict[str, str]]


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


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, by header or while streaming."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and int(declared) > self.limit:
            return await _too_large(self.limit, send)
        seen, responded = 0, False

        async def counted() -> dict:
            nonlocal seen, responded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not responded:  # a chunked body without a content-length
                responded = True
                await _too_large(self.limit, send)
                return {"type": "http.disconnect"}  # the app stops reading; its answer is dropped
            return message

        async def guarded(message: dict) -> None:
            if not responded:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not responded:
                raise


async def _too_large(limit: int, send: Any) -> None:
    body = json.dumps({"detail": f"request body larger than the limit of {limit} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(err: Exception) -> HTTPException:
    if isinstance(err, KeyError):
        return HTTPException(404, str(err.args[0]) if err.args else "no such memory")
    if isinstance(err, ValueError) and "exceeds the limit" in str(err):
        return HTTPException(413, str(err))
    return HTTPException(422, str(err))


def create_app(engine: Engine, cfg: ServiceConfig | None = None, checkpoint: str | None = None) -> FastAPI:
    """The service app for `engine` (its store is where memories live)."""
    from gradmem import __version__

    cfg = cfg or ServiceConfig()
    batcher = Batcher(engine, cfg.max_batch, cfg.batch_wait_ms)
    buckets = TokenBuckets(cfg.rate_per_second, cfg.rate_burst)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.store.clean()  # leftovers of a crashed writer
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="gradmem", version=__version__, lifespan=lifespan,
                  description="Write a context into a few memory vectors once, answer questions from the memory.")
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)
    app.state.batcher = batcher

    @app.middleware("http")
    async def rate_limit(request: Request, call_next: Any) -> Response:
        if request.url.path not in EXEMPT:
            wait = buckets.take(request.client.host if request.client else "?")
            if wait > 0:
                return JSONResponse({"detail": f"rate limit of {cfg.rate_per_second:g} requests/s exceeded; "
                                     f"retry in {wait:.2f} s"}, 429, headers={"Retry-After": str(max(1, round(wait)))})
        return await call_next(request)

    def check_write(body: WriteBody) -> None:
        try:
            engine.encode(body.text)
        except ValueError as err:
            raise _error(err) from err

    @app.post("/v1/memories", status_code=201, summary="write a text into a memory")
    async def create_memory(body: WriteBody, stream: bool = False) -> Any:
        check_write(body)
        if not stream:
            try:
                result = await batcher.write(body.text, body.steps, body.lr, body.target_loss)
            except (KeyError, ValueError) as err:
                raise _error(err) from err
            return {**result.meta, "created": result.created}
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await batcher.write(body.text, body.steps, body.lr, body.target_loss,
                                             lambda step, loss: events.put_nowait(("step", {"step": step, "loss": loss})))
                events.put_nowait(("done", {**result.meta, "created": result.created}))
            except Exception as err:  # noqa: BLE001 - reported to the client as an event
                events.put_nowait(("error", {"detail": str(err)}))

        task = asyncio.create_task(run())

        async def sse() -> AsyncIterator[str]:
            while True:
                kind, data = await events.get()
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                if kind != "step":
                    break
            await task

        return StreamingResponse(sse(), media_type="text/event-stream", status_code=201)

    @app.get("/v1/memories", summary="list all memories")
    async def list_memories() -> list[dict[str, Any]]:
        return [engine.describe(meta) for meta in engine.store.list()]

    @app.get("/v1/memories/{memory_id}", summary="one memory's metadata")
    async def get_memory(memory_id: str) -> dict[str, Any]:
        try:
            return engine.describe(engine.store.show(memory_id))
        except KeyError as err:
            raise _error(err) from err

    @app.delete("/v1/memories/{memory_id}", status_code=204, summary="delete a memory")
    async def delete_memory(memory_id: str) -> Response:
        try:
            found = engine.forget(memory_id)
        except KeyError as err:
            raise _error(err) from err
        if not found:
            raise HTTPException(404, f"no memory {memory_id!r}")
        return Response(status_code=204)

    @app.post("/v1/memories/{memory_id}/ask", response_model=Answers, summary="answer questions from a memory")
    async def ask(memory_id: str, body: AskBody) -> Any:
        if len(body.questions) > cfg.max_questions:
            raise HTTPException(413, f"{len(body.questions)} questions; the limit is {cfg.max_questions} per request")
        if body.max_new_tokens is not None and body.max_new_tokens > cfg.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {body.max_new_tokens} > limit {cfg.max_new_tokens}")
        if memory_id not in engine.store:
            raise HTTPException(404, f"no memory {memory_id!r}")
        try:
            answers = await batcher.ask(memory_id, body.questions, body.max_new_tokens)
        except (KeyError, ValueError) as err:
            raise _error(err) from err
        return {"id": memory_id, "answers": [{"question": q, "answer": a} for q, a in zip(body.questions, answers)]}

    @app.get("/health", summary="liveness and queue state")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {"status": "ok", "queued": batcher.pending, "batches": stats.batches, "jobs": stats.jobs,
                "largest_batch": stats.largest}

    @app.get("/version", summary="versions, model fingerprint and limits")
    async def version() -> dict[str, Any]:
        return {"gradmem": __version__, "memory_format": FORMAT_VERSION, "checkpoint": checkpoint,
                "model_fingerprint": engine.fingerprint, "memory_vectors_per_block": engine.block_vectors,
                "hidden_size": engine.model.backbone.hidden_size, "chunk_tokens": engine.chunk_tokens,
                "max_context_tokens": engine.max_context_tokens, "limits": asdict(cfg)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("gradmem").joinpath("web/index.html").read_text(encoding="utf-8")

    return app
