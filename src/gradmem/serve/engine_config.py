"""The engine's settings and the values it hands back (gradmem.serve.engine): kept apart so the
command line and the service can build flags and type their callbacks without the engine itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gradmem.core.task import Task

StepCallback = Callable[[int, int, float], None]  # (text index, step, mean loss over its blocks)


@dataclass
class EngineConfig:
    """Limits and defaults of an engine."""

    max_blocks: int = 16  # most memory blocks (chunks) one text may be written into
    chunk_tokens: int | None = None  # tokens per chunk; None = as many as the window allows
    max_new_tokens: int = 8  # default answer length
    stop: str | None = None  # answers are cut after the first occurrence of this string
    cache_memories: int = 256  # loaded memories kept in RAM

    def __post_init__(self) -> None:
        if self.max_blocks < 1 or self.max_new_tokens < 1 or self.cache_memories < 0:
            raise ValueError("max_blocks and max_new_tokens must be >= 1, cache_memories >= 0")
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")


@dataclass(frozen=True)
class TaskText:
    """How the checkpoint's task phrases things: the layout a plain question is wrapped in before it
    is encoded (bAbI: "\\nQuestion: {question}\\nAnswer:"), and an example context with questions
    for the web page (empty when the task has none)."""

    question_layout: str = "{question}"
    example_context: str = ""
    example_questions: tuple[str, ...] = ()

    @classmethod
    def of(cls, task: Task) -> TaskText:
        """The text conventions of a registry task (its `question_layout` and `example()`)."""
        context, questions = task.example()
        return cls(task.question_layout, context, tuple(questions))


@dataclass
class WriteResult:
    """One written (or found) memory."""

    id: str
    created: bool  # False when the store already held it (the write cost nothing)
    meta: dict[str, Any] = field(repr=False)
