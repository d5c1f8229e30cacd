"""Meta-training loop: AdamW, warmup + schedule, clipping, periodic evaluation, early stopping,
an optional curriculum, checkpoints with exact resume and a JSONL metrics log.

`Trainer(model, cfg, stages, out_dir, spec)` takes its settings as a TrainConfig and its curriculum
as a list of `Stage`s (gradmem.run.train_config); the run spec is only what checkpoints record.
`Trainer.from_spec` reads all three from a run spec.

Training data for generator tasks is drawn fresh each step from a seed derived from (run seed,
step), so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gradmem.core.batch import Batch, Example, collate
from gradmem.core.device import (
    out_of_memory_as_error,
    peak_memory_mib,
    reset_peak_memory,
    resolve_device,
    rng_state,
    set_rng_state,
)
from gradmem.core.errors import CheckpointError, TrainingDiverged
from gradmem.core.files import atomic_write_text
from gradmem.core.task import Task
from gradmem.evaluation.evaluate import evaluate
from gradmem.methods.model import MemoryModel
from gradmem.run.build import build_task
from gradmem.run.checkpoint import save_checkpoint
from gradmem.run.saved_state import load_scores, load_trainer_state
from gradmem.run.train_config import SCHEDULES, Stage, TrainConfig, curriculum, lr_factor
from gradmem.run.weights import load_weights
from gradmem.training.compiled import CompiledStep
from gradmem.training.distributed import DataParallel

__all__ = ["SCHEDULES", "Stage", "TrainConfig", "Trainer", "curriculum", "lr_factor", "read_metrics"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, without those a resume superseded: logs written before
    the resume-time cut existed repeat the steps between the last checkpoint and the crash; a step
    that goes back drops every earlier record from that step on."""
    records: list[dict[str, Any]] = []
    last_step: dict[str, int] = {}
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # a line cut short by a crash mid-write
                break
            raise ValueError(f"{path}: line {number} is not JSON ({err})") from None
        step, kind = _step(record), record.get("kind", "")
        if step <= last_step.get(kind, -1):  # the sitting after a resume: it replaces what it repeats
            records = [r for r in records if _step(r) < step or (_step(r) == step and r.get("kind", "") != kind)]
            last_step = {k: min(v, step) for k, v in last_step.items()}
        records.append(record)
        last_step[kind] = step
    return records


def _step(record: dict[str, Any]) -> int:
    return record.get("step", 0)


class Trainer:
    """Runs (and resumes) one training run in `out_dir`."""

    def __init__(
        self,
        model: MemoryModel,
        cfg: TrainConfig,
        stages: list[Stage],
        out_dir: str | Path,
        spec: dict[str, Any],
        on_log: Callable[[dict[str, Any]], None] | None = None,
        parallel: DataParallel | None = None,
    ) -> None:
        if not stages:
            raise ValueError("a run needs at least one stage")
        self.model = model
        self.device = next(model.parameters()).device  # where the model was put: the run trains there
        self.parallel = parallel or DataParallel()  # data-parallel rank; only rank 0 logs and saves
        self.forward_model = self.parallel.wrap(model)  # DDP around the model when data-parallel
        self.cfg = cfg
        self.stages = stages
        self.spec = spec  # what checkpoints record, so that load_checkpoint rebuilds this model
        self.out_dir = Path(out_dir)
        self.on_log = on_log or (lambda record: None)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, betas=self.cfg.adam_betas
        )
        self.step = 0
        self.stage_start = 0  # step the current stage began
        self.stage_start_s = 0.0  # training seconds (elapsed()) when it began
        self._elapsed_before = 0.0  # training seconds of earlier sessions of this run (resume)
        self._started = time.time()
        self.stage = 0
        self.best = -1.0
        self.bad_evals = 0
        self.history: list[dict[str, Any]] = []
        self._tasks: dict[int, Task] = {}
        self._valid: dict[int, list] = {}
        self._bucket_key: tuple[int, int] | None = None  # (stage, first step) of the length-bucket pool held
        self._bucket_batches: list[list[Example]] = []
        self._compiled = (
            CompiledStep(
                model,
                backend=self.cfg.compile_backend,
                compile_after=self.cfg.compile_after,
                eager_fallback=self.parallel.world_size == 1,  # ranks may not split between the two paths
            )
            if self.cfg.compile
            else None
        )

    @classmethod
    def from_spec(
        cls,
        model: MemoryModel,
        spec: dict[str, Any],
        out_dir: str | Path,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        parallel: DataParallel | None = None,
        device: str | torch.device | None = None,
    ) -> Trainer:
        """The trainer of a run spec: its `train` section, its task and curriculum; checkpoints save `spec`.
        The model is moved to `device` (default: the spec's `train.device`, `auto` = CUDA when available)
        before the optimiser is made, so weights, optimiser state and batches all live there."""
        cfg = TrainConfig(**spec.get("train", {}))
        model.to(resolve_device(cfg.device if device is None else device))
        return cls(model, cfg, curriculum(spec["task"], cfg), out_dir, spec, on_log, parallel)

    # -- data -----------------------------------------------------------------------------------
    def task(self, stage: int) -> Task:
        if stage not in self._tasks:
            self._tasks[stage] = build_task({"task": self.stages[stage].task})
        return self._tasks[stage]

    def valid_set(self, stage: int) -> list:
        if stage not in self._valid:
            self._valid[stage] = self.task(stage).make_split("valid", self.cfg.eval_examples, self.cfg.seed)
        return self._valid[stage]

    def train_batch(self, step: int) -> Batch:
        """This rank's slice of the training batch of `step`: a function of (seed, stage, step) only."""
        task = self.task(self.stage)
        return self.parallel.shard(collate(self._train_examples(step), task.tokenizer.pad_id))

    def _train_examples(self, step: int) -> list[Example]:
        # A distinct, reproducible stream per (seed, step): offset far from the valid/test seeds.
        task, stream = self.task(self.stage), 1_000_003 * (self.cfg.seed + 1)
        size, buckets = self.cfg.batch_size, self.cfg.length_buckets
        if buckets == 1:
            return task.make_split("train", size, seed=stream + step)
        # Length buckets: the steps of one block share a pool of `buckets` batches, drawn from the seed
        # of the block's first step, sorted by length and cut into batches that the block's steps take
        # in a seeded order. A stage that begins mid-block draws its own pool for the same block.
        first = step - step % buckets
        if self._bucket_key != (self.stage, first):
            pool = task.make_split("train", size * buckets, seed=stream + first)
            pool.sort(key=lambda e: len(e.context) + len(e.query) + len(e.target))  # stable: ties keep draw order
            batches = [pool[i * size : (i + 1) * size] for i in range(buckets)]
            order = torch.randperm(buckets, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + first))
            self._bucket_key, self._bucket_batches = (self.stage, first), [batches[i] for i in order.tolist()]
        return self._bucket_batches[step - first]

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "stage": self.stage,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "last_stage_start": self.last_stage_start,
            "stage_start": self.stage_start,
            "stage_start_s": self.stage_start_s,
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": rng_state(),
            "elapsed_s": self.elapsed(),
        }

    def save(self) -> None:
        if not self.parallel.is_main:
            return
        save_checkpoint(self.out_dir / "last", self.model, self.spec, self.state())

    def resume(self) -> bool:
        """Load `out_dir/last` if present; returns whether a run was resumed. A partial or damaged
        `last/` raises CheckpointError with the reason: restarting silently would overwrite it."""
        state = load_trainer_state(self.out_dir / "last")
        if state is None:
            self._cut_metrics_after(0)  # a crash before the first checkpoint: the run starts over
            return False
        load_weights(self.model, self.out_dir / "last", self.device)
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # moves its state to the parameters' device
            set_rng_state(state["torch_rng"])
        except (ValueError, KeyError, RuntimeError, TypeError) as err:
            raise CheckpointError(
                f"checkpoint {self.out_dir / 'last'}: its optimiser state does not fit this model ({err})"
            ) from err
        self.step, self.stage, self.best, self.bad_evals = (
            state["step"],
            state["stage"],
            state["best"],
            state["bad_evals"],
        )
        if self.stage >= len(self.stages):
            raise CheckpointError(
                f"checkpoint {self.out_dir / 'last'} is at curriculum stage {self.stage + 1} but this spec has "
                f"{len(self.stages)} stage(s): a resume may change the curriculum, not cut it below the stage reached"
            )
        self.best = max(self.best, self._score_of_best(self.stage))
        self._cut_metrics_after(self.step)
        self._elapsed_before = state.get("elapsed_s", 0.0)  # checkpoints from before it was saved count from 0
        # checkpoints from before stage_start was saved: the last stage's start, else count from the resume
        older = state.get("last_stage_start")
        self.stage_start = state.get("stage_start", self.step if older is None else older)
        self.stage_start_s = state.get("stage_start_s", self._elapsed_before)
        return True

    def _cut_metrics_after(self, step: int) -> None:
        """Drop the log lines of steps after `step`: the steps a crash lost are trained (and logged) again."""
        path = self.out_dir / "metrics.jsonl"
        if not self.parallel.is_main or not path.exists():
            return
        kept = [r for r in read_metrics(path) if _step(r) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))  # a crash leaves the old log whole

    @property
    def last_stage_start(self) -> int | None:
        """The step the last stage began; None before it has."""
        return self.stage_start if self.stage == len(self.stages) - 1 else None

    def elapsed(self) -> float:
        """Seconds this run has trained, counted across resumes (evaluations included)."""
        return self._elapsed_before + time.time() - self._started

    def _out_of_time(self) -> bool:
        return self.cfg.max_minutes is not None and self.elapsed() >= 60 * self.cfg.max_minutes

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.parallel.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.on_log(record)

    # -- loop -------------------------------------------------------------------------------------
    def run_eval(self) -> dict[str, Any]:
        what = f"an evaluation batch of eval_batch_size {self.cfg.eval_batch_size}"
        with out_of_memory_as_error(what, "lower train.eval_batch_size"):
            result = evaluate(
                self.model,
                self.valid_set(self.stage),
                self.cfg.eval_batch_size,
                pad_id=self.task(self.stage).tokenizer.pad_id,
            )
        record = {"kind": "eval", "step": self.step, "stage": self.stage, **result, "elapsed_s": self.elapsed()}
        self.log(record)
        return record

    def train(self) -> dict[str, Any]:
        """Train until `steps`, early stopping or the target; returns the last evaluation."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last_stage = len(self.stages) - 1
        self.model.train()
        record: dict[str, Any] = {}
        self._started = time.time()
        reset_peak_memory(self.device)
        step_what = f"a training step of batch_size {self.cfg.batch_size}"
        step_advice = (
            "lower train.batch_size (the meta-gradient keeps every WRITE step's activations), "
            "method.write.steps or the task's context length"
        )
        while self.step < self.end_step():
            if self.stage < last_stage and self.step >= self._stage_end():
                self._next_stage()
            for group in self.optimizer.param_groups:
                group["lr"] = self.cfg.lr * lr_factor(self.step, self.cfg, self.decay_window(), self.budget_progress())
            with out_of_memory_as_error(step_what, step_advice):
                loss, read_loss, write_losses = self._gradients(self.train_batch(self.step).to(self.device))
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
            self._check_finite(loss, grad_norm)
            self.optimizer.step()
            self.step += 1
            if self.step % self.cfg.log_every == 0:
                self.log(
                    {
                        "kind": "train",
                        "step": self.step,
                        "stage": self.stage,
                        "loss": loss.item(),
                        "read_loss": read_loss.item(),
                        "grad_norm": float(grad_norm),
                        "write_loss": write_losses.mean(1).tolist() if write_losses is not None else [],
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "elapsed_s": self.elapsed(),
                        **self._peak_memory(),
                    }
                )
            done = out_of_time = self._out_of_time()
            if self.step % self.cfg.eval_every == 0 or self.step == self.end_step() or out_of_time:
                record = self.run_eval()
                done = self._after_eval(record["exact_match"], last_stage) or out_of_time
            if done or self.step % self.cfg.checkpoint_every == 0 or self.step == self.end_step():
                self.save()
            if done:
                break
        return record or self.run_eval()

    def _peak_memory(self) -> dict[str, float]:
        """{"peak_gpu_mib": ...} since training (re)started, on CUDA; nothing on the CPU."""
        peak = peak_memory_mib(self.device)
        return {} if peak is None else {"peak_gpu_mib": peak}

    def _gradients(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Fill every trainable parameter's .grad for `batch`; returns (loss, READ loss, (K, B) write losses)."""
        self.optimizer.zero_grad(set_to_none=True)
        on_this_stage = self.cfg.compile_stages == "all" or self.stage == len(self.stages) - 1
        compiled = self._compiled if on_this_stage else None
        result = None if compiled is None else compiled(batch)  # None: not (yet) worth compiling
        if result is None:
            out = self.forward_model(batch)
            out.loss.backward()
            stats = out.memory.stats
            return out.loss.detach(), out.read.loss.detach(), None if stats is None else stats.losses
        result.assign_grads(compiled.parameters)
        self.parallel.average_gradients(compiled.parameters)  # what DDP's backward hook does
        return result.loss, result.read_loss, result.write_losses

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop before a non-finite loss or gradient reaches the weights: nothing is saved from it,
        so `last/` keeps the latest finite checkpoint."""
        if math.isfinite(float(loss)) and math.isfinite(float(grad_norm)):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"step {self.step + 1}: loss {float(loss)}, gradient norm {float(grad_norm)} at lr {lr:g}; "
            f"stopped without saving (the last checkpoint, if any, is from before this step); "
            "lower train.lr or set train.grad_clip"
        )

    def end_step(self) -> int:
        """The step training ends at: `steps`, or sooner once the last stage has had `last_stage_steps`."""
        if self.cfg.last_stage_steps is None or self.last_stage_start is None:
            return self.cfg.steps
        return min(self.cfg.steps, self.last_stage_start + self.cfg.last_stage_steps)

    def decay_window(self) -> tuple[int, int] | None:
        """(first, end) step of the lr decay: the last stage's steps with `last_stage_steps`; before
        that stage begins the lr stays at its peak."""
        if self.cfg.last_stage_steps is None:
            return None
        if self.last_stage_start is None:
            return (self.cfg.steps, self.cfg.steps + 1)  # not started: no decay yet
        return (self.last_stage_start, self.end_step())

    def budget_progress(self) -> float | None:
        """With `last_stage_until_budget`: the share of the last stage's time already spent (0 before
        that stage, so the lr stays at its peak), else None (the decay follows steps)."""
        if not self.cfg.last_stage_until_budget or self.cfg.max_minutes is None:
            return None
        if self.last_stage_start is None:
            return 0.0
        left = 60 * self.cfg.max_minutes - self.stage_start_s
        return min(1.0, max(0.0, (self.elapsed() - self.stage_start_s) / left)) if left > 0 else 1.0

    def _stage_end(self) -> float:
        """The step a fixed-length stage ends at (the sum of its and earlier stages' steps); inf for
        a stage that ends on exact match."""
        if self.stages[self.stage].steps is None:
            return math.inf
        return sum(stage.steps or 0 for stage in self.stages[: self.stage + 1])

    def _score_of_best(self, stage: int) -> float:
        """The score best/ was saved at if it belongs to `stage`, else -1. best/ may come from steps
        after last/ that a resume trains again; unless the rerun is bit-exact (same machine and
        threads) it must beat that model, not an older score."""
        saved = load_scores(self.out_dir / "best")
        return float(saved["exact_match"]) if saved is not None and saved["stage"] == stage else -1.0

    def _next_stage(self) -> None:
        self.stage += 1
        self.stage_start, self.stage_start_s = self.step, self.elapsed()
        self.best, self.bad_evals = self._score_of_best(self.stage), 0

    def _after_eval(self, em: float, last_stage: int) -> bool:
        """Curriculum advance, early stopping and target check; returns whether to stop."""
        if self.stage < last_stage:
            capped = self.cfg.max_stage_steps is not None and self.step - self.stage_start >= self.cfg.max_stage_steps
            if self.stages[self.stage].steps is None and (em >= self.cfg.advance_exact_match or capped):
                self._next_stage()
            return False
        if em > self.best:
            self.best, self.bad_evals = em, 0
            if self.parallel.is_main:
                scores = {"step": self.step, "stage": self.stage, "exact_match": em}
                save_checkpoint(self.out_dir / "best", self.model, self.spec, scores=scores)
        else:
            self.bad_evals += 1
        if self.cfg.target_exact_match is not None and em >= self.cfg.target_exact_match:
            return True
        return self.cfg.early_stop_patience is not None and self.bad_evals >= self.cfg.early_stop_patience
