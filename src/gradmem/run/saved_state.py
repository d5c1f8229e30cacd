"""What a checkpoint keeps beside the model: the trainer state (`trainer.pt`: optimiser, schedule,
progress, so a run resumes exactly) and `scores.json` (what the model scored when it was saved)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from gradmem.core.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.core.checkpoint_folder import recover, verify
from gradmem.core.errors import CheckpointError

SCORES = "scores.json"  # in a checkpoint folder: what the model scored when it was saved
TRAINER_STATE = "trainer.pt"  # in a training checkpoint: optimiser, schedule, progress, RNG


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


def load_trainer_state(directory: str | Path) -> dict[str, Any] | None:
    """Optimiser / schedule / progress saved with a training checkpoint; None if there is no such
    folder. CheckpointError if it is partial (no trainer state) or damaged."""
    recover(directory)
    if not Path(directory).exists():
        return None
    verify(directory, ("model.safetensors", "spec.json", TRAINER_STATE))
    try:
        # map to the CPU: a run trained on a GPU resumes anywhere (the optimiser moves its state back)
        state = torch.load(Path(directory) / TRAINER_STATE, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {directory}: trainer.pt is damaged ({type(err).__name__})") from err
    needed = ("step", "stage", "best", "bad_evals", "optimizer", "torch_rng")
    if not isinstance(state, dict) or any(key not in state for key in needed):
        raise CheckpointError(f"checkpoint {directory}: trainer.pt lacks the trainer state ({', '.join(needed)})")
    return state
