"""The HTTP service: a FastAPI app that writes texts into memories and answers questions from them.

    POST   /v1/memories              {"text": ...} -> 201 memory (?stream=true: server-sent events,
                                     one `step` event per write step, then `done`)
    GET    /v1/memories              all usable memories (header X-Damaged-Memories: how many are not)
    GET    /v1/memories/{id}         one memory            DELETE /v1/memories/{id}   204
    POST   /v1/memories/{id}/ask     {"questions": [...]}
    GET    /health, /version         GET /  the web page   GET /docs, /openapi.json  the API (offline)

Every request is checked against its budget (gradmem.serve.budget) before it is queued, so no request
allocates more than the limits allow; model calls of concurrent requests go through one `Batcher`
with a per-request deadline. Body size and read time, per-client rate and the optional API key
are enforced in gradmem.serve.http_guard, which also maps gradmem's typed errors to status codes.
Memories live in the engine's on-disk store, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from gradmem.errors import GradmemError, InvalidInput, LimitExceeded, NotFound
from gradmem.serve.batcher import Batcher
from gradmem.serve.budget import Budget
from gradmem.serve.engine import Engine
from gradmem.serve.http_guard import (
    BodyGuard,
    TokenBuckets,
    check_key,
    client_key,
    error_response,
    install_error_handlers,
    safe_text,
    status_of,
)
from gradmem.serve.memory_io import FORMAT_VERSION

EXEMPT = ("/health", "/version", "/", "/docs", "/openapi.json")  # never rate limited


@dataclass
class ServiceConfig:
    """Limits, batching and access of the service."""

    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_questions: int = 64  # questions per ask request
    max_new_tokens: int = 64  # the most answer tokens a request may ask for
    rate_per_second: float = 50.0  # sustained requests per second per client (keyed on the socket peer)
    rate_burst: int = 100  # requests a client may send at once
    max_batch: int = 32  # most requests run as one model batch
    batch_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    request_timeout_s: float = 30.0  # a request not done by then gets 503 (a queued one is dropped unrun)
    body_timeout_s: float = 10.0  # a request body not fully received by then gets 408
    max_queue: int = 1024  # requests waiting for the model beyond this get 503 at once
    api_key: str | None = None  # if set, writes and deletes need it (Authorization: Bearer KEY / X-API-Key)
    protect_reads: bool = False  # with api_key: listing, showing and asking need it too
    budget: Budget = field(default_factory=Budget)  # work limits per request and per batch

    def __post_init__(self) -> None:
        if (
            min(
                self.max_body_bytes,
                self.max_questions,
                self.max_new_tokens,
                self.rate_burst,
                self.max_batch,
                self.max_queue,
            )
            < 1
        ):
            raise ValueError("service limits must be >= 1")
        positive = (self.rate_per_second, self.request_timeout_s, self.body_timeout_s)
        if not all(math.isfinite(x) and x > 0 for x in positive) or not 0 <= self.batch_wait_ms < math.inf:
            raise ValueError("rate_per_second and the timeouts must be finite and > 0, batch_wait_ms >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")

    def limits(self) -> dict[str, Any]:
        """The limits clients may see (/version): everything but the key."""
        return {k: v for k, v in asdict(self).items() if k != "api_key"} | {
            "api_key_required": self.api_key is not None
        }


def _clean_text(value: str, what: str) -> str:
    """Refuse text UTF-8 cannot carry (lone surrogates) or with nothing but whitespace."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"{what} contains a lone surrogate (U+{ord(value[err.start]):04X}) at character {err.start}"
        ) from None
    if not value.strip():
        raise ValueError(f"{what} is empty or only whitespace")
    return value


class WriteBody(BaseModel):
    text: str = Field(min_length=1, description="the context to write into memory")
    steps: int | None = Field(None, ge=0, description="maximum WRITE steps (default: the checkpoint's)")
    lr: float | None = Field(
        None, gt=0, le=100, allow_inf_nan=False, description="inner learning rate (default: the checkpoint's)"
    )
    target_loss: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="stop each chunk once its reconstruction loss <= this"
    )

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean_text(value, "text")


class AskBody(BaseModel):
    questions: list[str] = Field(min_length=1, description="one or many questions about the memory")
    max_new_tokens: int | None = Field(None, ge=1, description="answer length in tokens")

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: list[str]) -> list[str]:
        return [_clean_text(q, f"question {i}") for i, q in enumerate(value)]


class Answers(BaseModel):
    id: str
    answers: list[dict[str, str]]


def create_app(engine: Engine, cfg: ServiceConfig | None = None, checkpoint: str | None = None) -> FastAPI:
    """The service app for `engine` (its store is where memories live). `checkpoint` is a label
    shown by /version (the CLI passes the folder's name, never its path)."""
    from gradmem import __version__

    cfg = cfg or ServiceConfig()
    budget = cfg.budget
    batcher = Batcher(
        engine,
        cfg.max_batch,
        cfg.batch_wait_ms,
        budget.max_batch_ask_tokens,
        budget.max_write_token_steps,
        cfg.request_timeout_s,
        cfg.max_queue,
    )
    buckets = TokenBuckets(cfg.rate_per_second, cfg.rate_burst)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.store.clean()  # leftovers of a crashed writer
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="gradmem",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Write a context into a few memory vectors once, answer questions from the memory.",
    )
    app.add_middleware(BodyGuard, limit=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.state.batcher = batcher
    install_error_handlers(app)

    @app.middleware("http")
    async def rate_limit(request: Request, call_next: Any) -> Response:
        if request.url.path not in EXEMPT:
            wait = buckets.take(client_key(request))
            if wait > 0:
                return error_response(
                    429,
                    f"rate limit of {cfg.rate_per_second:g} requests/s exceeded; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await call_next(request)

    def writer(request: Request) -> None:
        if cfg.api_key is not None:
            check_key(request, cfg.api_key)

    def reader(request: Request) -> None:
        if cfg.api_key is not None and cfg.protect_reads:
            check_key(request, cfg.api_key)

    def write_cost(body: WriteBody) -> int:
        ids = engine.encode(body.text)  # refuses empty, unknown characters, more blocks than allowed
        return budget.check_write(len(ids), engine.settings(body.steps, body.lr, body.target_loss)["steps"])

    @app.post("/v1/memories", status_code=201, summary="write a text into a memory", dependencies=[Depends(writer)])
    async def create_memory(body: WriteBody, stream: bool = False) -> Any:
        cost = write_cost(body)
        if not stream:
            result = await batcher.write(body.text, body.steps, body.lr, body.target_loss, cost=cost)
            return {**result.meta, "created": result.created}
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def run() -> None:
            try:
                result = await batcher.write(
                    body.text,
                    body.steps,
                    body.lr,
                    body.target_loss,
                    lambda step, loss: events.put_nowait(("step", {"step": step, "loss": loss})),
                    cost=cost,
                )
                events.put_nowait(("done", {**result.meta, "created": result.created}))
            except Exception as err:  # noqa: BLE001 - reported to the client as an event
                detail = str(err) if isinstance(err, GradmemError) else "internal error (see the server log)"
                events.put_nowait(("error", {"detail": safe_text(detail), "status": status_of(err)}))

        task = asyncio.create_task(run())

        async def sse() -> AsyncIterator[str]:
            while True:
                kind, data = await events.get()
                yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
                if kind != "step":
                    break
            await task

        return StreamingResponse(sse(), media_type="text/event-stream", status_code=201)

    def described(meta: dict[str, Any]) -> dict[str, Any]:
        try:
            return engine.describe(meta)
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a sidecar the store let through
            raise InvalidInput(f"memory {meta.get('id')} has an unusable sidecar") from err

    @app.get("/v1/memories", summary="list all memories", dependencies=[Depends(reader)])
    async def list_memories() -> JSONResponse:
        items, damaged = engine.store.scan()
        good = []
        for meta in items:
            try:
                good.append(described(meta))
            except InvalidInput:
                damaged.append({"id": str(meta.get("id"))})
        return JSONResponse(good, headers={"X-Damaged-Memories": str(len(damaged))})

    @app.get("/v1/memories/{memory_id}", summary="one memory's metadata", dependencies=[Depends(reader)])
    async def get_memory(memory_id: str) -> dict[str, Any]:
        return described(engine.store.show(memory_id))

    @app.delete("/v1/memories/{memory_id}", status_code=204, summary="delete a memory", dependencies=[Depends(writer)])
    async def delete_memory(memory_id: str) -> Response:
        if not engine.forget(memory_id):
            raise NotFound(f"no memory {memory_id!r}")
        return Response(status_code=204)

    @app.post(
        "/v1/memories/{memory_id}/ask",
        response_model=Answers,
        summary="answer questions from a memory",
        dependencies=[Depends(reader)],
    )
    async def ask(memory_id: str, body: AskBody) -> Any:
        if len(body.questions) > cfg.max_questions:
            raise LimitExceeded(f"{len(body.questions)} questions; the limit is {cfg.max_questions} per request")
        max_new = body.max_new_tokens or engine.cfg.max_new_tokens
        if max_new > cfg.max_new_tokens:
            raise LimitExceeded(f"max_new_tokens {max_new} exceeds the limit of {cfg.max_new_tokens}")
        cost = budget.check_ask([len(engine.encode_question(q)) for q in body.questions], max_new)
        if memory_id not in engine.store:
            raise NotFound(f"no memory {memory_id!r}")
        answers = await batcher.ask(memory_id, body.questions, body.max_new_tokens, cost=cost)
        return {"id": memory_id, "answers": [{"question": q, "answer": a} for q, a in zip(body.questions, answers)]}

    @app.get("/health", summary="liveness and queue state")
    async def health() -> dict[str, Any]:
        stats = batcher.stats
        return {
            "status": "ok",
            "queued": batcher.pending,
            "batches": stats.batches,
            "jobs": stats.jobs,
            "largest_batch": stats.largest,
            "timed_out": stats.timed_out,
            "refused_busy": stats.refused,
        }

    @app.get("/version", summary="versions, model fingerprint and limits")
    async def version() -> dict[str, Any]:
        return {
            "gradmem": __version__,
            "memory_format": FORMAT_VERSION,
            "checkpoint": checkpoint,
            "model_fingerprint": engine.fingerprint,
            "memory_vectors_per_block": engine.block_vectors,
            "hidden_size": engine.model.backbone.hidden_size,
            "chunk_tokens": engine.chunk_tokens,
            "max_context_tokens": engine.max_context_tokens,
            "limits": cfg.limits(),
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("gradmem.serve").joinpath("web/index.html").read_text(encoding="utf-8")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> str:  # a page of the package that renders /openapi.json: no CDN, works offline
        return resources.files("gradmem.serve").joinpath("web/docs.html").read_text(encoding="utf-8")

    return app


def server_config(
    app: FastAPI, host: str, port: int, trust_proxy: str | None = None, log_level: str = "warning"
) -> Any:
    """The uvicorn configuration `gradmem serve` runs. Proxy headers are applied only from the
    addresses in `trust_proxy`; without it the rate limit sees the socket peer, whatever
    X-Forwarded-For a client sends (uvicorn would otherwise trust it from loopback)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=trust_proxy is not None,
        forwarded_allow_ips=trust_proxy or "",
        timeout_keep_alive=5,
    )
