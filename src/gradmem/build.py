"""Build a task and a MemoryModel from a JSON-able run spec, and save / load them as checkpoints.

A run spec is a plain dict with four parts, each the config of the code that uses it:
    {"task": {"name": "kv", ...}, "backbone": {"name": "llama", ...},
     "method": {"name": "gradmem", ...}, "train": {...}}
(`name` picks the registered kind in each section; backbone sections saved before that key was
shared use `type`, still read) and optionally `"reference_compat": true` (gradmem.reference_compat:
the authors' code's choices). A checkpoint folder holds `model.safetensors` (all weights, or for a
frozen / LoRA backbone loaded from a folder only the trained tensors plus `backbone.json`, see
gradmem.checkpoint_weights), `spec.json`, for training runs `trainer.pt` (optimiser, schedule, progress) so a run resumes exactly, and `manifest.json` with
the SHA-256 of each; it is written as one atomic folder switch (gradmem.checkpoint). Specs are
validated against the config dataclasses before anything is built (gradmem.spec_check).
"""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import torch

from gradmem.backbones import build_backbone
from gradmem.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.checkpoint import recover, verify, write_folder
from gradmem.checkpoint_weights import BACKBONE_REF, check_sizes, load_weights, save_weights
from gradmem.errors import CheckpointError, ConfigError
from gradmem.methods import build_method
from gradmem.model import MemoryModel
from gradmem.reference_compat import reference_compat
from gradmem.spec_check import validate_spec
from gradmem.tasks import TASKS

SCORES = "scores.json"  # in a checkpoint folder: what the model scored when it was saved


def build_task(spec: dict[str, Any]) -> Any:
    """The task spec["task"] names (its other keys are the task's config); an unknown name lists the
    valid ones."""
    settings = dict(spec["task"])
    name = settings.pop("name", None)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name](**settings)


def build_model(spec: dict[str, Any], task: Any | None = None) -> MemoryModel:
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


def save_checkpoint(
    directory: str | Path,
    model: MemoryModel,
    spec: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    scores: dict[str, Any] | None = None,
) -> Path:
    """Save weights + spec (+ trainer state, + `scores.json`: what the model scored when saved)
    with their checksums as one atomic folder switch: a crash at any point leaves either the
    previous checkpoint or this one, never a mix. A frozen or LoRA backbone loaded from a folder is
    saved as a reference (gradmem.checkpoint_weights)."""

    def write(folder: Path) -> None:
        save_weights(model, folder, spec["backbone"])
        if trainer_state is not None:
            torch.save(trainer_state, folder / "trainer.pt")
        if scores is not None:
            (folder / SCORES).write_text(json.dumps(scores, indent=2))
        (folder / "spec.json").write_text(json.dumps(spec, indent=2))

    return write_folder(directory, write)


def load_scores(directory: str | Path) -> dict[str, Any] | None:
    """What a checkpoint scored when it was saved (`best/` has it), or None."""
    path = Path(directory) / SCORES
    if not path.is_file():
        return None
    try:
        scores = json.loads(read_limited_text(path, SMALL_LIMIT, SCORES))
        return scores if isinstance(scores.get("stage"), int) and float(scores["exact_match"]) >= 0 else None
    except (ValueError, OSError, AttributeError, KeyError, TypeError):  # unreadable or malformed: no score
        return None


def load_spec(directory: str | Path) -> dict[str, Any]:
    """The run spec of a checkpoint folder. A reader changes nothing on disk: a `.NAME.new-*` folder
    beside it may be a training run's save in progress (the writer repairs an interrupted one)."""
    directory = Path(directory)
    path = directory / "spec.json"
    if not path.exists():
        pending = any(directory.parent.glob(f".{directory.name}.new-*")) if directory.parent.is_dir() else False
        note = "; a save of it is in progress or was interrupted (resuming the run repairs it)" if pending else ""
        raise CheckpointError(f"{directory} is not a gradmem checkpoint (no spec.json){note}")
    try:
        spec = json.loads(read_limited_text(path, SMALL_LIMIT, "spec.json"))
    except (ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {directory}: spec.json is unreadable ({err})") from err
    if not isinstance(spec, dict):
        raise CheckpointError(f"checkpoint {directory}: spec.json is not a JSON object (a run spec)")
    return spec


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[MemoryModel, Any, dict[str, Any]]:
    """Rebuild (model, task, spec) from a checkpoint folder, its files checked against their SHA-256."""
    spec = load_spec(directory)
    try:
        validate_spec(spec)  # a spec of the wrong shape is named here, not met as a TypeError while building
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {directory}: spec.json is not a valid run spec: {err}") from err
    verify(directory, ("model.safetensors", "spec.json"))
    task = build_task(spec)
    if _sized_by_spec(spec, directory):
        # sizes checked on a model with no memory behind it; the RNG is left as a plain build leaves it
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            check_sizes(build_model(spec, task), directory)
    model = build_model(spec, task)
    load_weights(model, directory, device)
    return model.to(device), task, spec


def _sized_by_spec(spec: dict[str, Any], directory: str | Path) -> bool:
    """Whether the spec alone gives the model's sizes and the weight file holds every tensor (a
    backbone loaded from a folder takes its sizes from there, and is loaded from there)."""
    from_folder = "path" in spec["backbone"] or "pretrained" in spec["backbone"]
    return not from_folder and not (Path(directory) / BACKBONE_REF).exists()


def load_trainer_state(directory: str | Path) -> dict[str, Any] | None:
    """Optimiser / schedule / progress saved with a training checkpoint; None if there is no such
    folder. CheckpointError if it is partial (no trainer state) or damaged."""
    recover(directory)
    if not Path(directory).exists():
        return None
    verify(directory, ("model.safetensors", "spec.json", "trainer.pt"))
    try:
        # map to the CPU: a run trained on a GPU resumes anywhere (the optimiser moves its state back)
        state = torch.load(Path(directory) / "trainer.pt", map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: trainer.pt is damaged ({type(err).__name__})") from err
    needed = ("step", "stage", "best", "bad_evals", "optimizer", "torch_rng")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise CheckpointError(f"checkpoint {directory}: trainer.pt lacks the trainer state ({', '.join(needed)})")
    return state


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
