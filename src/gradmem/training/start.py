"""Starting a training run: the one sequence every entry point shares.

`gradmem train`, scripts/train_ddp.py and the benchmarks' preset runner all start a run the same
way: refuse a folder that already holds a run unless resuming, seed, build the model on the CPU
(so a seed gives the same initial weights on every device), make the Trainer (which moves the
model to its device) and resume from `OUT/last` when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradmem.core.errors import ConfigError
from gradmem.run.build import build_model
from gradmem.run.spec import validate_spec
from gradmem.training.distributed import DataParallel
from gradmem.training.trainer import Trainer

RUN_FILES = ("last", "best", "metrics.jsonl")  # what marks a folder as holding a run


@dataclass
class StartedRun:
    """A run ready to train."""

    trainer: Trainer  # its model is `trainer.model`, on the run's device
    resumed: bool  # True when `OUT/last` was loaded (training continues at `trainer.step`)


def refuse_existing_run(out: str | Path, resume: bool) -> None:
    """ConfigError when `out` already holds a run and `resume` is off: starting over would replace
    its checkpoints and mix two runs in one log."""
    if not resume and any((Path(out) / name).exists() for name in RUN_FILES):
        raise ConfigError(
            f"{out} already holds a run; add --resume to continue it, or give another --out "
            "(or delete the folder) to start a new one"
        )


def start_run(
    spec: dict[str, Any],
    out: str | Path,
    resume: bool = False,
    *,
    device: str | torch.device | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    parallel: DataParallel | None = None,
) -> StartedRun:
    """Seed -> build -> Trainer -> resume, for the run spec `spec` in folder `out`.

    `device` defaults to the spec's `train.device`; `parallel` makes the trainer data-parallel.
    With `resume`, a damaged or partial `OUT/last` raises (never a silent restart) and a missing
    one starts at step 0; without it, an `out` that already holds a run is refused."""
    validate_spec(spec)
    refuse_existing_run(out, resume)
    torch.manual_seed(spec.get("train", {}).get("seed", 0))  # the seed fixes the initial weights
    model = build_model(spec)
    trainer = Trainer.from_spec(model, spec, out, on_log, parallel=parallel, device=device)
    return StartedRun(trainer, resume and trainer.resume())
