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
Memories live in the engine's on-disk store, so they survive restarts. The /v1/memories routes are
in gradmem.serve.memory_routes; `create_app` makes the shared pieces (batcher, budget, access guards)
once and registers each group of routes with them.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from gradmem.core.memory_file import FORMAT_VERSION
from gradmem.core.version import VERSION
from gradmem.serve.batcher import Batcher
from gradmem.serve.engine import Engine
from gradmem.serve.http_guard import BodyGuard, TokenBuckets, client_key, error_response, install_error_handlers
from gradmem.serve.memory_routes import access_guards, add_memory_routes
from gradmem.serve.openapi_contract import install_contract
from gradmem.serve.page_security import PageSecurity, content_security_policy, parse_hosts
from gradmem.serve.schemas import error_responses
from gradmem.serve.service_config import ServiceConfig, server_config

EXEMPT = ("/health", "/version", "/", "/docs", "/openapi.json")  # never rate limited
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
    add_rate_limit(app, cfg)
    writer, reader = access_guards(cfg)
    add_memory_routes(app, engine, batcher, cfg, writer, reader)
    add_info_routes(app, engine, batcher, cfg, checkpoint)
    add_page_routes(app)
    return app


def add_rate_limit(app: FastAPI, cfg: ServiceConfig) -> None:
    """Answer 429 to a client past its token bucket (the paths in EXEMPT are never limited)."""
    buckets = TokenBuckets(cfg.rate_per_second, cfg.rate_burst)

    @app.middleware("http")
    async def rate_limit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path not in EXEMPT:
            wait = buckets.take(client_key(request))
            if wait > 0:
                return error_response(
                    429,
                    f"rate limit of {cfg.rate_per_second:g} requests/s exceeded; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
        return await call_next(request)


def add_info_routes(app: FastAPI, engine: Engine, batcher: Batcher, cfg: ServiceConfig, checkpoint: str | None) -> None:
    """GET /health (liveness, queue state) and GET /version (versions, fingerprint, limits)."""

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


def add_page_routes(app: FastAPI) -> None:
    """GET / (the web page) and GET /docs (the API page), both kept out of /openapi.json."""
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


__all__ = ["ServiceConfig", "create_app", "server_config"]
