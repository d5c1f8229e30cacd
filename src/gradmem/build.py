"""Build a task and a MemoryModel from a JSON-able run spec, and save / load them as checkpoints.

A run spec is a plain dict with four parts, each the config of the code that uses it:
    {"task": {"name": "kv", ...}, "backbone": {"type": "llama", ...},
     "method": {"name": "gradmem", ...}, "train": {...}}
and optionally `"reference_compat": true` (gradmem.reference_compat: the authors' code's choices).
A checkpoint folder holds `model.safetensors` (all weights), `spec.json` and, for training runs,
`trainer.pt` (optimiser, schedule, progress) so a run resumes exactly.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from gradmem.backbones import build_backbone
from gradmem.methods import build_method
from gradmem.model import MemoryModel
from gradmem.reference_compat import reference_compat
from gradmem.tasks import make_task

SPEC_PARTS = ("task", "backbone", "method")


def build_task(spec: dict[str, Any]) -> Any:
    """The task named in spec["task"]."""
    task_spec = dict(spec["task"])
    return make_task(task_spec.pop("name"), **task_spec)


def build_model(spec: dict[str, Any], task: Any | None = None) -> MemoryModel:
    """A freshly initialised MemoryModel for the spec (vocab size taken from the task's tokenizer)."""
    for part in SPEC_PARTS:
        if part not in spec or not isinstance(spec[part], dict):
            raise ValueError(f"run spec needs a {part!r} section (a JSON object); has {sorted(spec)}")
    task = task or build_task(spec)
    if spec.get("reference_compat"):
        spec = reference_compat(spec, task.tokenizer.pad_id)
    backbone_spec = dict(spec["backbone"])
    if backbone_spec.get("type") == "llama":
        backbone_spec.setdefault("vocab_size", task.tokenizer.vocab_size)
        if backbone_spec["vocab_size"] < task.tokenizer.vocab_size:
            raise ValueError(f"backbone vocab {backbone_spec['vocab_size']} < tokenizer vocab {task.tokenizer.vocab_size}")
    backbone = build_backbone(backbone_spec)
    method_spec = dict(spec["method"])
    method = build_method(method_spec.pop("name"), backbone, method_spec)
    return MemoryModel(backbone, method, read_loss=spec.get("train", {}).get("read_loss", "example"))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, model: MemoryModel, spec: dict[str, Any],
                    trainer_state: dict[str, Any] | None = None) -> Path:
    """Save weights + spec (+ trainer state). Files are written then renamed, so a crash mid-save
    never leaves a half-written checkpoint under the final names."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.tmp"
    save_model(model, str(tmp))
    os.replace(tmp, directory / "model.safetensors")
    if trainer_state is not None:
        torch.save(trainer_state, directory / "trainer.pt.tmp")
        os.replace(directory / "trainer.pt.tmp", directory / "trainer.pt")
    _atomic_write_text(directory / "spec.json", json.dumps(spec, indent=2))
    return directory


def load_spec(directory: str | Path) -> dict[str, Any]:
    """The run spec of a checkpoint folder."""
    path = Path(directory) / "spec.json"
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a gradmem checkpoint (no spec.json)")
    return json.loads(path.read_text())


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[MemoryModel, Any, dict[str, Any]]:
    """Rebuild (model, task, spec) from a checkpoint folder."""
    spec = load_spec(directory)
    task = build_task(spec)
    model = build_model(spec, task)
    missing, unexpected = load_model(model, str(Path(directory) / "model.safetensors"), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"checkpoint {directory} does not match its spec: missing {missing}, unexpected {unexpected}")
    return model.to(device), task, spec


def load_trainer_state(directory: str | Path) -> dict[str, Any] | None:
    """Optimiser / schedule / progress saved with a training checkpoint, if any."""
    path = Path(directory) / "trainer.pt"
    return torch.load(path, weights_only=True) if path.exists() else None


def apply_overrides(spec: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key.sub=value` overrides (values parsed as JSON, else kept as strings)."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.path=value")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = spec
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = value
    return spec
