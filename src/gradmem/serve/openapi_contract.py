"""The OpenAPI document a running service publishes: the static request models (gradmem.serve.schemas)
tightened with the limits of *this* server and model, so that a request the schema calls valid is one
the server takes, and a client generated from /openapi.json learns the limits before it is refused.

What goes in: the configured caps (questions per ask, answer tokens, write steps) and, for a
character-level model, its alphabet and token counts (one token per character). What cannot be a
JSON Schema constraint stays a documented 413: limits on products (tokens x steps, questions x
answer tokens) and on token counts of a subword or word tokenizer, which depend on tokenization."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gradmem.serve.engine import Engine
    from gradmem.serve.service_config import ServiceConfig


def install_contract(app: FastAPI, cfg: ServiceConfig, engine: Engine) -> None:
    """Make `app.openapi()` return the schema with this server's limits in it (built once, cached)."""
    base: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            tighten(base(), cfg, engine)  # base() caches the schema it returns in app.openapi_schema
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def tighten(schema: dict[str, Any], cfg: ServiceConfig, engine: Engine) -> None:
    """Write the server's limits into the request bodies of `schema` (in place)."""
    bodies = schema["components"]["schemas"]
    write, ask = bodies["WriteBody"]["properties"], bodies["AskBody"]["properties"]
    _set(write["steps"], maximum=cfg.budget.max_write_steps)
    _set(ask["max_new_tokens"], maximum=cfg.max_new_tokens)
    ask["questions"]["maxItems"] = cfg.max_questions
    pattern = engine.tokenizer.text_pattern()
    if pattern is None:
        return
    # One token per character: the token limits are character limits, and the alphabet a pattern.
    # A question is counted inside the task's layout (gradmem.serve.engine.encode_question).
    layout_chars = len(engine.text.question_layout.format(question=""))
    for field, most in (
        (write["text"], min(engine.max_context_tokens, cfg.budget.max_write_tokens)),
        (ask["questions"]["items"], cfg.budget.max_question_tokens - layout_chars),
    ):
        field["pattern"] = pattern
        field["maxLength"] = most


def _set(field: dict[str, Any], **constraints: Any) -> None:
    """Add constraints to an optional field (`anyOf: [{type: integer, ...}, {type: null}]`)."""
    for option in field.get("anyOf", [field]):
        if option.get("type") != "null":
            option.update(constraints)
