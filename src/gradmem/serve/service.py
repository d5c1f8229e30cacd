"""The HTTP service: a FastAPI app that writes texts into memories and answers questions from them.

    POST   /v1/memories              {"text": ...} -> 201 memory (?stream=true: server-sent events,
                                     one `step` event per write step, then `done`)
    GET    /v1/memories              a page of the usable memories, oldest first (?offset=&limit=), with the
                                     store's total (header X-Damaged-Memories: how many of the page are not)
    GET    /v1/memories/{id}         one memory            DELETE /v1/memories/{id}   204
    POST   /v1/memories/{id}/ask     {"questions": [...]}
    GET    /v1/memories/{id}/reconstruction   the context decoded back from the memory alone, with its
                                     token accuracy against the written context (a fidelity probe)
    GET    /health, /version         GET /  the web page   GET /docs, /openapi.json  the API (offline)

Every request is checked against its budget (gradmem.serve.budget) before it is queued, so no request
allocates more than the limits allow; model calls of concurrent requests go through one `Batcher`
with a per-request deadline (a reconstruction, which is not batched, runs on the batcher's model
thread under the same queue limit and deadline). Body size and read time, per-client rate and the
optional API key are enforced in gradmem.serve.http_guard, which also maps gradmem's typed errors to
status codes.
Memories live in the engine's on-disk store, so they survive restarts.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from gradmem.core.errors import GradmemError, InvalidInput, LimitExceeded, NotFound
from gradmem.core.memory_file import FORMAT_VERSION
from gradmem.core.version import VERSION
from gradmem.serve.batcher import Batcher
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
from gradmem.serve.openapi_contract import install_contract
from gradmem.serve.page_security import PageSecurity, content_security_policy, parse_hosts
from gradmem.serve.schemas import (
    WRITE_RESPONSE,
    Answers,
    AskBody,
    MemoryPage,
    Reconstruction,
    WriteBody,
    WrittenMemory,
    error_responses,
)
from gradmem.serve.service_config import ServiceConfig, server_config

EXEMPT = ("/health", "/version", "/", "/docs", "/openapi.json")  # never rate limited
DEFAULT_PAGE, MAX_PAGE = 100, 1000  # memories per page of GET /v1/memories
MAX_OFFSET = 10**9
ALWAYS = (400, 429, 500, 503)  # statuses any API route may answer: Host, rate limit, a bug, busy or store
WEB_PAGES = ("index.html", "docs.html")  # in gradmem/serve/web/, read once when the app is made


def create_app(engine: Engine, cfg: ServiceConfig | None = None, checkpoint: str | None = None) -> FastAPI:
    """The service app for `engine` (its store is where memories live). `checkpoint` is a label
    shown by /version (the CLI passes the folder's name, never its path)."""
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
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Write a context into a few memory vectors once, answer questions from the memory.",
    )
    app.add_middleware(BodyGuard, limit=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(PageSecurity, allowed=parse_hosts(cfg.allowed_hosts))  # outermost: before anything else
    app.state.batcher = batcher
    install_error_handlers(app)
    install_contract(app, cfg, engine)  # /openapi.json with this server's limits

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

    @app.post(
        "/v1/memories",
        status_code=201,
        summary="write a text into a memory",
        dependencies=[Depends(writer)],
        response_model=WrittenMemory,
        responses=error_responses(*ALWAYS, 401, 408, 413, 422, 507) | WRITE_RESPONSE,
    )
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
            info = engine.describe(meta)
            json.dumps(info, allow_nan=False)  # NaN (a diverged write stored by an older version) is not JSON
            return info
        except (KeyError, TypeError, ValueError, AttributeError) as err:  # a sidecar the store let through
            raise InvalidInput(f"memory {meta.get('id')} has an unusable sidecar") from err

    def listed(offset: int, limit: int) -> dict[str, Any]:
        items, damaged, total = engine.store.page(offset, limit)
        good = []
        for meta in items:
            try:
                good.append(described(meta))
            except InvalidInput:
                damaged.append({"id": str(meta.get("id"))})
        return {"memories": good, "total": total, "offset": offset, "limit": limit, "damaged": len(damaged)}

    @app.get(
        "/v1/memories",
        summary="one page of the memories, oldest first",
        dependencies=[Depends(reader)],
        response_model=MemoryPage,
        responses=error_responses(*ALWAYS, 401, 422),
    )
    async def list_memories(
        offset: int = Query(0, ge=0, le=MAX_OFFSET, description="memories to skip"),
        limit: int = Query(DEFAULT_PAGE, ge=1, le=MAX_PAGE, description="most memories in this page"),
    ) -> JSONResponse:
        # file-system work, a lot of it in a large store: off the event loop, so /health and asks go on
        page = await asyncio.to_thread(listed, offset, limit)
        return JSONResponse(page, headers={"X-Damaged-Memories": str(page["damaged"])})

    @app.get(
        "/v1/memories/{memory_id}",
        summary="one memory's metadata",
        dependencies=[Depends(reader)],
        responses=error_responses(*ALWAYS, 401, 404, 409, 422),
    )
    async def get_memory(memory_id: str) -> dict[str, Any]:
        return described(engine.store.show(memory_id))

    @app.delete(
        "/v1/memories/{memory_id}",
        status_code=204,
        summary="delete a memory",
        dependencies=[Depends(writer)],
        responses=error_responses(*ALWAYS, 401, 404, 422),
    )
    async def delete_memory(memory_id: str) -> Response:
        if not engine.forget(memory_id):
            raise NotFound(f"no memory {memory_id!r}")
        return Response(status_code=204)

    @app.post(
        "/v1/memories/{memory_id}/ask",
        response_model=Answers,
        summary="answer questions from a memory",
        dependencies=[Depends(reader)],
        responses=error_responses(*ALWAYS, 401, 404, 408, 409, 413, 422),
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

    @app.get(
        "/v1/memories/{memory_id}/reconstruction",
        response_model=Reconstruction,
        summary="decode a memory back into text (a fidelity probe)",
        dependencies=[Depends(reader)],
        responses=error_responses(*ALWAYS, 401, 404, 409, 413, 422),
    )
    async def reconstruction(memory_id: str) -> Any:
        meta = described(engine.store.show(memory_id))  # 404 before any model work
        try:
            tokens, chunk = int(meta["context_tokens"]), int(meta["write"].get("chunk_tokens") or engine.chunk_tokens)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidInput(f"memory {memory_id} has an unusable sidecar") from err
        budget.check_reconstruction(tokens, chunk, engine.block_vectors, cached=engine.decodes_incrementally)
        report = await batcher.call(lambda should_stop: engine.reconstruct(memory_id, should_stop=should_stop))
        texts = {k: safe_text(report[k]) for k in ("reconstruction", "context") if report[k] is not None}
        return {**report, **texts, "id": memory_id}

    @app.get("/health", summary="liveness and queue state", responses=error_responses(400, 500))
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

    @app.get("/version", summary="versions, model fingerprint and limits", responses=error_responses(400, 500))
    async def version() -> dict[str, Any]:
        return {
            "gradmem": VERSION,
            "memory_format": FORMAT_VERSION,
            "checkpoint": checkpoint,
            "model_fingerprint": engine.fingerprint,
            "memory_vectors_per_block": engine.block_vectors,
            "hidden_size": engine.model.backbone.hidden_size,
            "chunk_tokens": engine.chunk_tokens,
            "max_context_tokens": engine.max_context_tokens,
            "limits": cfg.limits(),
            "example": {"context": engine.text.example_context, "questions": list(engine.text.example_questions)},
        }

    pages = {name: resources.files("gradmem.serve").joinpath(f"web/{name}").read_text("utf-8") for name in WEB_PAGES}

    def html(name: str) -> HTMLResponse:
        text = pages[name]
        return HTMLResponse(text, headers={"Content-Security-Policy": content_security_policy(text)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return html("index.html")

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:  # a page of the package that renders /openapi.json: no CDN, works offline
        return html("docs.html")

    return app


__all__ = ["ServiceConfig", "create_app", "server_config"]
