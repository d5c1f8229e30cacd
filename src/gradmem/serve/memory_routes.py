"""The /v1/memories routes of the HTTP service: write, list, show, delete, ask, reconstruct.

Each group is registered by a small function that gets what it shares with the others (the engine,
the batcher, the budget, the access guards) as arguments; `gradmem.serve.service.create_app` makes
those once and calls every group. Every route checks its request against the budget before it
queues any model work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from gradmem.core.errors import GradmemError, InvalidInput, LimitExceeded, NotFound
from gradmem.serve.batcher import Batcher
from gradmem.serve.budget import Budget
from gradmem.serve.engine import Engine
from gradmem.serve.http_guard import check_key, safe_text, status_of
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
from gradmem.serve.service_config import ServiceConfig

DEFAULT_PAGE, MAX_PAGE = 100, 1000  # memories per page of GET /v1/memories
MAX_OFFSET = 10**9
ALWAYS = (400, 429, 500, 503)  # statuses any API route may answer: Host, rate limit, a bug, busy or store

Guard = Callable[[Request], None]  # a FastAPI dependency that raises when the request may not go on


def access_guards(cfg: ServiceConfig) -> tuple[Guard, Guard]:
    """(writer, reader): the dependencies of routes that change the store and of those that only
    read it. Reads need the API key only when `cfg.protect_reads` is set."""

    def writer(request: Request) -> None:
        if cfg.api_key is not None:
            check_key(request, cfg.api_key)

    def reader(request: Request) -> None:
        if cfg.api_key is not None and cfg.protect_reads:
            check_key(request, cfg.api_key)

    return writer, reader


def add_memory_routes(
    app: FastAPI, engine: Engine, batcher: Batcher, cfg: ServiceConfig, writer: Guard, reader: Guard
) -> None:
    """Every /v1/memories route, in the order /openapi.json lists them."""
    add_write_route(app, engine, batcher, cfg.budget, writer)
    add_browse_routes(app, engine, writer, reader)
    add_answer_routes(app, engine, batcher, cfg, reader)


def add_write_route(app: FastAPI, engine: Engine, batcher: Batcher, budget: Budget, writer: Guard) -> None:
    """POST /v1/memories: write a text into a new memory (?stream=true: one event per step)."""

    @app.post(
        "/v1/memories",
        status_code=201,
        summary="write a text into a memory",
        dependencies=[Depends(writer)],
        response_model=WrittenMemory,
        responses=error_responses(*ALWAYS, 401, 408, 413, 422, 507) | WRITE_RESPONSE,
    )
    async def create_memory(body: WriteBody, stream: bool = False) -> Any:
        ids = engine.encode(body.text)  # refuses empty, unknown characters, more blocks than allowed
        cost = budget.check_write(len(ids), engine.settings(body.steps, body.lr, body.target_loss)["steps"])
        if not stream:
            result = await batcher.write(body.text, body.steps, body.lr, body.target_loss, cost=cost)
            return {**result.meta, "created": result.created}
        return StreamingResponse(streamed_write(batcher, body, cost), media_type="text/event-stream", status_code=201)


def streamed_write(batcher: Batcher, body: WriteBody, cost: int) -> AsyncIterator[str]:
    """Start one write now and return its server-sent events: a `step` event per write step, then
    `done` (the memory) or `error` (its detail and status)."""
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

    task = asyncio.create_task(run())  # queued while the request is handled, not when the stream is first read

    async def sse() -> AsyncIterator[str]:
        while True:
            kind, data = await events.get()
            yield f"event: {kind}\ndata: {json.dumps(data)}\n\n"
            if kind != "step":
                break
        await task

    return sse()


def described(engine: Engine, meta: dict[str, Any]) -> dict[str, Any]:
    """A memory's sidecar as the API shows it; InvalidInput for a sidecar that cannot be shown."""
    try:
        info = engine.describe(meta)
        json.dumps(info, allow_nan=False)  # NaN (a diverged write stored by an older version) is not JSON
        return info
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a sidecar the store let through
        raise InvalidInput(f"memory {meta.get('id')} has an unusable sidecar") from err


def listed(engine: Engine, offset: int, limit: int) -> dict[str, Any]:
    """One page of the store: the memories that can be shown, and how many of the page cannot."""
    items, damaged, total = engine.store.page(offset, limit)
    good = []
    for meta in items:
        try:
            good.append(described(engine, meta))
        except InvalidInput:
            damaged.append({"id": str(meta.get("id"))})
    return {"memories": good, "total": total, "offset": offset, "limit": limit, "damaged": len(damaged)}


def add_browse_routes(app: FastAPI, engine: Engine, writer: Guard, reader: Guard) -> None:
    """GET /v1/memories (a page), GET and DELETE /v1/memories/{id}: no model work."""

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
        page = await asyncio.to_thread(listed, engine, offset, limit)
        return JSONResponse(page, headers={"X-Damaged-Memories": str(page["damaged"])})

    @app.get(
        "/v1/memories/{memory_id}",
        summary="one memory's metadata",
        dependencies=[Depends(reader)],
        responses=error_responses(*ALWAYS, 401, 404, 409, 422),
    )
    async def get_memory(memory_id: str) -> dict[str, Any]:
        return described(engine, engine.store.show(memory_id))

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


def add_answer_routes(app: FastAPI, engine: Engine, batcher: Batcher, cfg: ServiceConfig, reader: Guard) -> None:
    """POST /v1/memories/{id}/ask and GET /v1/memories/{id}/reconstruction: model work on a stored memory."""
    budget = cfg.budget

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
        meta = described(engine, engine.store.show(memory_id))  # 404 before any model work
        try:
            tokens, chunk = int(meta["context_tokens"]), int(meta["write"].get("chunk_tokens") or engine.chunk_tokens)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InvalidInput(f"memory {memory_id} has an unusable sidecar") from err
        budget.check_reconstruction(tokens, chunk, engine.block_vectors, cached=engine.decodes_incrementally)
        report = await batcher.call(lambda should_stop: engine.reconstruct(memory_id, should_stop=should_stop))
        texts = {k: safe_text(report[k]) for k in ("reconstruction", "context") if report[k] is not None}
        return {**report, **texts, "id": memory_id}
