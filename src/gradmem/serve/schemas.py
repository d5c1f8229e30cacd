"""Request and response bodies of the HTTP service (gradmem.serve.service), validated by pydantic:
text UTF-8 cannot carry or that is only whitespace is refused before it reaches the model. Request
bodies are strict: an unknown field (a typo such as "step") is refused rather than silently
ignored, counts must be JSON integers (5 or 5.0, not true, "5" or 5.5) and rates JSON numbers (not
false)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

# What the text checks below enforce, said in the schema too: at least one character that is not
# whitespace (a JSON Schema pattern matches anywhere in the string). The check itself stays in
# _clean_text, whose messages name the problem.
NOT_BLANK = {"pattern": r"\S"}


def _integral_float(value: Any) -> Any:
    """5.0 is a JSON integer as JSON Schema counts one; the field's strict int check refuses the rest
    (true, "5", 5.5)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, json_schema_extra=NOT_BLANK, description="the context to write into memory")
    steps: int | None = Field(None, ge=0, strict=True, description="maximum WRITE steps (default: the checkpoint's)")
    lr: float | None = Field(
        None,
        gt=0,
        le=100,
        allow_inf_nan=False,
        strict=True,
        description="inner learning rate (default: the checkpoint's)",
    )
    target_loss: float | None = Field(
        None, ge=0, allow_inf_nan=False, strict=True, description="stop each chunk once its reconstruction loss <= this"
    )

    _steps = field_validator("steps", mode="before")(_integral_float)

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _clean_text(value, "text")


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # schema only: a length constraint on the items would make pydantic refuse a lone surrogate
    # before _clean_text can name it
    questions: list[Annotated[str, Field(json_schema_extra={"minLength": 1, **NOT_BLANK})]] = Field(
        min_length=1, description="one or many questions about the memory"
    )
    max_new_tokens: int | None = Field(None, ge=1, strict=True, description="answer length in tokens")

    _max_new_tokens = field_validator("max_new_tokens", mode="before")(_integral_float)

    @field_validator("questions")
    @classmethod
    def _questions(cls, value: list[str]) -> list[str]:
        return [_clean_text(q, f"question {i}") for i, q in enumerate(value)]


class WrittenMemory(BaseModel):
    """A memory as POST /v1/memories answers it: its id and whether this request wrote it, then its
    metadata (model fingerprint, write settings, losses, sizes) as GET /v1/memories/{id} shows it."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(description="the memory's id, for ask / show / reconstruction / delete")
    created: bool = Field(description="false when the same text was already in memory (that memory is returned)")


def _memory_route(path: str, method: str) -> dict[str, Any]:
    """An OpenAPI link from a written memory to a route of it: the new memory's id as {memory_id}."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": {"memory_id": "$response.body#/id"}}


# The 201 of POST /v1/memories: JSON, or with ?stream=true server-sent events (`step` events, then
# `done` with the memory or `error`); links say where its id goes next (clients, and the API fuzzer's
# write -> ask -> delete sequences, follow them).
WRITE_RESPONSE: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "the memory written (JSON), or with ?stream=true its progress as server-sent events",
        "content": {
            "text/event-stream": {
                "schema": {  # one event: its name and its JSON data
                    "type": "object",
                    "properties": {"event": {"enum": ["step", "done", "error"]}, "data": {"type": "string"}},
                    "required": ["event", "data"],
                }
            }
        },
        "links": {
            "show": _memory_route("/v1/memories/{memory_id}", "get"),
            "ask": _memory_route("/v1/memories/{memory_id}/ask", "post"),
            "reconstruction": _memory_route("/v1/memories/{memory_id}/reconstruction", "get"),
            "delete": _memory_route("/v1/memories/{memory_id}", "delete"),
        },
    }
}


class Answers(BaseModel):
    id: str
    answers: list[dict[str, str]]


class Reconstruction(BaseModel):
    """A memory's greedy reconstruction (gradmem.serve.fidelity.reconstruction_report): what the
    WRITE head decodes from the memory alone, scored against the written context when it was kept."""

    id: str
    blocks: int = Field(description="memory blocks (context chunks), each decoded on its own")
    reconstruction: str = Field(description="the text decoded greedily from the memory alone")
    reconstruction_note: str = Field(description="what `reconstruction` is (a fidelity probe, not the stored context)")
    context: str | None = Field(description="the context that was written, if the store kept it")
    token_accuracy: float | None = Field(None, description="share of context tokens the greedy decode got right")
    teacher_forced_accuracy: float | None = Field(
        None, description="share of context tokens the WRITE head predicts given the previous context tokens"
    )
    write_loss: list[float] = Field(description="reconstruction loss before each write step (mean over blocks)")
    final_write_loss: float | None = Field(description="reconstruction loss after the last write step")
    steps_taken: list[int] | None = Field(description="write steps each block took (adaptive writes)")
    memory_bytes: int
    kv_cache_bytes: int = Field(description="bytes of a full-context KV cache, for comparison")


class ErrorBody(BaseModel):
    """Every error answer of the service, whatever its status (validation errors included)."""

    detail: str = Field(description="what went wrong, in one line; never the request's input or a path")


class MemoryPage(BaseModel):
    """One page of GET /v1/memories."""

    memories: list[dict[str, Any]] = Field(description="the page's usable memories, oldest first")
    total: int = Field(description="memories in the store (usable or damaged)")
    offset: int
    limit: int
    damaged: int = Field(description="memories of this page left out as damaged (also the X-Damaged-Memories header)")


ERROR_MEANINGS = {
    400: "the Host header names a host this server does not answer for (--allowed-hosts)",
    401: "the server needs an API key and the request has none or a wrong one",
    404: "no memory with this id, or not a memory id",
    408: "the request body did not arrive within the body timeout",
    409: "the memory is damaged (unreadable, inconsistent or tampered files)",
    413: "the request is over a limit (body size, tokens, steps, questions, decode work)",
    422: "the request is not valid (a missing or mistyped field, an unknown field, text the model cannot read)",
    429: "more requests per second than the client's rate limit (Retry-After says when to retry)",
    500: "an unexpected error (its traceback is in the server log)",
    503: "the server is busy, the request passed its deadline, or the store cannot be read (Retry-After)",
    507: "the store's disk is full",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of these error statuses, all with the one error body."""
    return {code: {"model": ErrorBody, "description": ERROR_MEANINGS[code]} for code in codes}
