"""Build the task and the MemoryModel a run spec describes (validated first, gradmem.run.spec)."""

from __future__ import annotations

from typing import Any

from gradmem.backbones import build_backbone
from gradmem.core.task import Task
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel
from gradmem.run.reference_compat import reference_compat
from gradmem.run.spec import validate_spec
from gradmem.tasks import TASKS


def build_task(spec: dict[str, Any]) -> Task:
    """The task spec["task"] names (its other keys are the task's config); an unknown name lists the
    valid ones."""
    settings = dict(spec["task"])
    name = settings.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    task_class, _ = TASKS[name]
    task = task_class(**settings)
    if not isinstance(task, Task):  # a new registration that misses part of the contract
        raise TypeError(f"{task_class.__name__} does not implement gradmem.core.task.Task")
    return task


def build_model(spec: dict[str, Any], task: Task | None = None) -> MemoryModel:
    """A freshly initialised MemoryModel for the spec (vocab size taken from the task's tokenizer);
    ConfigError for unknown keys or values of the wrong type."""
    validate_spec(spec)
    task = task or build_task(spec)
    if spec.get("reference_compat"):
        spec = reference_compat(spec, task.tokenizer.pad_id)
    backbone = build_backbone(spec["backbone"], vocab_size=task.tokenizer.vocab_size)
    method_spec = dict(spec["method"])
    method = build_method(method_spec.pop("name"), backbone, method_spec)
    model = MemoryModel(backbone, method, read_loss=spec.get("train", {}).get("read_loss", "example"))
    method.init_from_backbone(backbone)  # last: the draws of everything above keep their order
    return model
