"""Training settings: `TrainConfig` (the `train` section of a run spec), the learning-rate
schedule, and the curriculum as a list of typed `Stage`s."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gradmem.methods.model import READ_LOSSES

SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """How the outer (meta) optimisation runs."""

    steps: int = 2000  # optimiser steps in total (all curriculum stages together)
    batch_size: int = 32  # examples per step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW (beta1, beta2); a lower beta2 (0.95) damps gradient spikes
    warmup_steps: int = 100  # linear warmup from 0 to lr
    schedule: str = "constant"  # after warmup: "constant" | "cosine" | "linear" decay to min_lr_ratio * lr
    min_lr_ratio: float = 0.1  # floor of the decaying schedules
    grad_clip: float | None = 1.0  # max global gradient norm; 0 or None = off
    eval_every: int = 200  # steps between evaluations
    eval_examples: int = 500  # held-out examples per evaluation
    eval_batch_size: int = 100  # batch size of evaluation
    early_stop_patience: int | None = None  # stop after this many evaluations without improvement
    target_exact_match: float | None = None  # stop once the last curriculum stage reaches this EM
    checkpoint_every: int = 500  # steps between checkpoints (the last step is always saved)
    max_minutes: float | None = None  # stop (and save) after this much training time, counted across resumes
    log_every: int = 10  # steps between training-loss log lines
    seed: int = 0  # seeds model init, data and the held-out set
    device: str = "auto"  # where the run trains: "auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N"
    curriculum: list[dict[str, Any]] = field(
        default_factory=list
    )  # task overrides per stage, e.g. [{"num_pairs": 1}, ...]
    advance_exact_match: float = 0.9  # held-out EM on the current stage that moves to the next stage
    stage_steps: list[int] | None = (
        None  # fixed schedule: steps spent in each stage but the last; EM then moves nothing
    )
    max_stage_steps: int | None = None  # an EM-advanced stage moves on after this many steps even below
    #                                     advance_exact_match (a plateau just under it would eat the budget)
    last_stage_steps: int | None = None  # train the last stage this many steps, the decay schedule spread over them
    last_stage_until_budget: bool = False  # with max_minutes: the last stage trains until the budget is spent, its
    #                                        decay spread over the time left when it began (every method then uses
    #                                        the whole budget, whatever its step costs)
    length_buckets: int = 1  # draw this many batches at once and hand them out sorted by example length (in a
    #                          seeded order): batches of alike lengths pad less where contexts vary (bAbI
    #                          QA2/QA3 pad ~2x). 1: each batch drawn on its own. Each step's batch still
    #                          depends only on (seed, stage, step), so a resume sees the same batches.
    read_loss: str = (
        "example"  # READ loss reduction: "example" mean of per-example means | "token" (build_model sets it)
    )
    compile: bool = (
        False  # trace the whole meta-gradient once per batch shape and compile it (gradmem.training.compiled)
    )
    compile_backend: str = "inductor"  # torch.compile backend of that graph; "eager" skips code generation (tests)
    compile_after: int = 0  # with compile: run a batch shape eagerly this many steps first, so shapes that
    #                         never last that long (short curriculum stages) are never compiled
    compile_stages: str = "all"  # with compile: "all" stages, or only the "last" (the one stage sure to last)

    def __post_init__(self) -> None:
        if self.compile_after < 0:
            raise ValueError(f"compile_after must be >= 0, got {self.compile_after}")
        counts = (
            "steps",
            "batch_size",
            "eval_every",
            "eval_examples",
            "eval_batch_size",
            "checkpoint_every",
            "log_every",
            "length_buckets",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.early_stop_patience is not None and self.early_stop_patience < 1:
            raise ValueError(f"early_stop_patience must be >= 1 or None, got {self.early_stop_patience}")
        if self.grad_clip is not None and not self.grad_clip >= 0:  # a negative norm flips every gradient
            raise ValueError(f"grad_clip must be >= 0 (0 or None: off), got {self.grad_clip}")
        for name in ("advance_exact_match", "target_exact_match"):  # fractions: 90 would never be reached
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} is an exact-match fraction in [0, 1], got {value}")
        floats = (self.lr, self.weight_decay, self.min_lr_ratio, self.advance_exact_match, self.grad_clip or 1.0)
        if not all(math.isfinite(x) for x in floats):  # an infinite lr trains straight to NaN weights
            raise ValueError(
                f"lr, weight_decay, min_lr_ratio, advance_exact_match and grad_clip must be finite, got {floats}"
            )
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0, warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        self.adam_betas = tuple(self.adam_betas)  # a JSON spec gives a list
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if self.max_minutes is not None and not 0 < self.max_minutes < math.inf:
            raise ValueError(f"max_minutes must be a positive number of minutes or None, got {self.max_minutes}")
        if self.read_loss not in READ_LOSSES:
            raise ValueError(f"unknown read_loss {self.read_loss!r}; valid: {list(READ_LOSSES)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {list(SCHEDULES)}")
        if self.stage_steps is not None and (
            len(self.stage_steps) != max(len(self.curriculum) - 1, 0) or min(self.stage_steps, default=1) < 1
        ):
            raise ValueError(
                f"stage_steps needs one positive step count per curriculum stage but the last "
                f"({max(len(self.curriculum) - 1, 0)}), got {self.stage_steps}"
            )
        if self.last_stage_steps is not None and self.last_stage_steps < 1:
            raise ValueError(f"last_stage_steps must be >= 1 or None, got {self.last_stage_steps}")
        if self.last_stage_until_budget and (self.max_minutes is None or self.last_stage_steps is not None):
            raise ValueError(
                "last_stage_until_budget needs max_minutes (the budget it runs to) and no last_stage_steps "
                f"(the other way to end the last stage), got max_minutes={self.max_minutes}, "
                f"last_stage_steps={self.last_stage_steps}"
            )
        if self.max_stage_steps is not None and self.max_stage_steps < 1:
            raise ValueError(f"max_stage_steps must be >= 1 or None, got {self.max_stage_steps}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.compile_stages not in ("all", "last"):
            raise ValueError(f"compile_stages must be 'all' or 'last', got {self.compile_stages!r}")


def lr_factor(
    step: int, cfg: TrainConfig, decay: tuple[int, int] | None = None, progress: float | None = None
) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then the chosen decay over the steps
    `decay` = (first, end); by default from the end of warmup to `cfg.steps`. A given `progress`
    (the share of the decay done, e.g. of a time budget) replaces the step-based one."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if progress is None:
        first, end = decay or (cfg.warmup_steps, cfg.steps)
        first = max(first, cfg.warmup_steps)
        progress = max(0, step - first) / max(1, end - first)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "linear":
        return 1 - (1 - floor) * min(progress, 1.0)
    return 1.0


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: the task it trains on and how it ends."""

    task: dict[str, Any]  # the task section of this stage (the run's task with the stage's settings over it)
    steps: int | None = None  # a fixed length in steps; None: until advance_exact_match (the last stage: to the end)


def curriculum(task: dict[str, Any], cfg: TrainConfig) -> list[Stage]:
    """The stages of a run: one per `cfg.curriculum` entry (its task settings over `task`, its length
    from `stage_steps`), or the task alone. The last stage is the target task."""
    if not cfg.curriculum:
        return [Stage(dict(task))]
    lengths = list(cfg.stage_steps or []) + [None] * len(cfg.curriculum)
    return [
        Stage({**task, **settings}, lengths[i] if i < len(cfg.curriculum) - 1 else None)
        for i, settings in enumerate(cfg.curriculum)
    ]
