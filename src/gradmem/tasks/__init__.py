"""Task registry: a plain dict from task name to task class, and a constructor by name."""

from __future__ import annotations

from typing import Any

from gradmem.tasks.babi import BabiConfig, BabiTask
from gradmem.tasks.kv import KVConfig, KVTask, generate_kv, kv_tokenizer
from gradmem.tasks.squad import SquadConfig, SquadTask
from gradmem.tasks.text import TextConfig, TextTask

TASKS: dict[str, type] = {"kv": KVTask, "babi": BabiTask, "squad": SquadTask, "text": TextTask}


def make_task(name: str, **kwargs: Any) -> Any:
    """Build the task registered as `name` with `kwargs`; an unknown name lists the valid ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)


__all__ = ["TASKS", "make_task", "KVConfig", "KVTask", "generate_kv", "kv_tokenizer",
           "BabiConfig", "BabiTask", "SquadConfig", "SquadTask", "TextConfig", "TextTask"]
