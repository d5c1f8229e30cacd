"""Task registry: a plain dict from task name to (task class, its config class), as for methods
(gradmem.run.build.build_task builds one)."""

from __future__ import annotations

from gradmem.tasks.babi import BabiConfig, BabiTask
from gradmem.tasks.kv import KVConfig, KVTask, generate_kv, kv_tokenizer
from gradmem.tasks.qa import QAConfig, QATask
from gradmem.tasks.squad import SquadConfig, SquadTask
from gradmem.tasks.text import TextConfig, TextTask

TASKS: dict[str, tuple[type, type]] = {
    "kv": (KVTask, KVConfig),
    "babi": (BabiTask, BabiConfig),
    "squad": (SquadTask, SquadConfig),
    "text": (TextTask, TextConfig),
    "qa": (QATask, QAConfig),
}


__all__ = [
    "TASKS",
    "KVConfig",
    "KVTask",
    "generate_kv",
    "kv_tokenizer",
    "BabiConfig",
    "BabiTask",
    "QAConfig",
    "QATask",
    "SquadConfig",
    "SquadTask",
    "TextConfig",
    "TextTask",
]
