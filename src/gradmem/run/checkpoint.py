"""Checkpoint folders of a model: save one, and rebuild (model, task, spec) from one.

A checkpoint folder holds `model.safetensors` (all weights, or for a frozen / LoRA backbone loaded
from a folder only the trained tensors plus `backbone.json`, see gradmem.run.weights), `spec.json`,
for training runs `trainer.pt` and for best ones `scores.json` (gradmem.run.saved_state), and
`manifest.json` with the SHA-256 of each; it is written as one atomic folder switch
(gradmem.core.checkpoint_folder), and loading checks every file against it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gradmem.core.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.core.checkpoint_folder import verify, write_folder
from gradmem.core.errors import CheckpointError, ConfigError
from gradmem.core.task import Task
from gradmem.methods.model import MemoryModel
from gradmem.run.build import build_model, build_task
from gradmem.run.saved_state import SCORES, TRAINER_STATE
from gradmem.run.spec import upgrade_spec, validate_spec
from gradmem.run.weights import BACKBONE_REF, check_sizes, load_weights, save_weights


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
    saved as a reference (gradmem.run.weights)."""

    def write(folder: Path) -> None:
        save_weights(model, folder, spec["backbone"])
        if trainer_state is not None:
            torch.save(trainer_state, folder / TRAINER_STATE)
        if scores is not None:
            (folder / SCORES).write_text(json.dumps(scores, indent=2))
        (folder / "spec.json").write_text(json.dumps(spec, indent=2))

    return write_folder(directory, write)


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
    try:
        return upgrade_spec(spec, f"checkpoint {directory}")
    except ConfigError as err:
        raise CheckpointError(f"checkpoint {directory}: spec.json is not a valid run spec: {err}") from err


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[MemoryModel, Task, dict[str, Any]]:
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
