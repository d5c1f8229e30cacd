"""Evaluation: exact match (teacher forced and generated), token accuracy, READ loss, WRITE curve;
and the choice of test-time WRITE settings (K, inner lr) on held-out examples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gradmem.core.batch import Example, iterate_batches
from gradmem.evaluation.metrics import exact_match_from_logits, exact_match_generated, token_accuracy
from gradmem.methods.model import MemoryModel


def evaluate(
    model: MemoryModel,
    examples: Sequence[Example],
    batch_size: int = 64,
    steps: int | None = None,
    lr: float | None = None,
    generate: bool = False,
    eos_id: int | None = None,
    pad_id: int = 0,
    swap_check: bool = False,
    measure_final: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float | list[float]]:
    """Score a model on held-out examples. `steps`/`lr` override the WRITE config (test-time K).

    Returns exact_match (teacher forced, answer tokens only), token_accuracy (all target tokens),
    loss (READ cross-entropy), write_loss (mean reconstruction loss before each WRITE step) and,
    with `generate`, generated_exact_match (greedy decoding). With `swap_check`, loss_swapped: the
    READ loss when each query reads the memory of the previous example in its batch (the last
    example's for the first) -- no higher than `loss` means the answers do not come from the memory;
    a batch of one reads its own. With `measure_final`, write_loss_final: the mean reconstruction
    loss after the last WRITE step (methods that write by gradient steps only). `on_batch` is called
    with each batch's number of examples once it is scored (a progress bar).
    """
    if not examples:
        raise ValueError("evaluate needs at least one example")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    em = correct = total = loss_sum = gen_em = swapped_sum = final_sum = 0.0
    write_curve: torch.Tensor | None = None
    with torch.no_grad():
        for batch in iterate_batches(examples, batch_size, pad_id):
            batch = batch.to(device)
            memory = model.write(batch.context, steps=steps, lr=lr, measure_final=measure_final)
            read = model.read(memory, batch.query, batch.target)
            if swap_check:
                other = memory.select(torch.arange(len(memory), device=device).roll(1))  # row i <- row i - 1
                swapped_sum += model.read(other, batch.query, batch.target).per_example_loss.sum().item()
            if memory.stats is not None and memory.stats.final_loss is not None:
                final_sum += memory.stats.final_loss.sum().item()
            em += exact_match_from_logits(read.logits, batch).float().sum().item()
            c, t = token_accuracy(read.logits, batch)
            correct, total = correct + c.item(), total + t.item()
            loss_sum += read.per_example_loss.sum().item()
            if memory.stats is not None and memory.stats.steps:
                curve = memory.stats.losses.sum(1)  # (K,)
                write_curve = curve if write_curve is None else write_curve + curve
            if generate:
                out = model.generate(memory, batch.query, int(batch.target.lengths.max()), eos_id)
                gen_em += exact_match_generated(out, batch).float().sum().item()
            if on_batch is not None:
                on_batch(len(batch.answer_len))
    model.train(was_training)
    n = len(examples)
    result: dict[str, float | list[float]] = {
        "exact_match": em / n,
        "token_accuracy": correct / max(total, 1.0),
        "loss": loss_sum / n,
        "write_loss": [] if write_curve is None else (write_curve / n).tolist(),
        "examples": float(n),
    }
    if generate:
        result["generated_exact_match"] = gen_em / n
    if swap_check:
        result["loss_swapped"] = swapped_sum / n
    if measure_final and write_curve is not None:
        result["write_loss_final"] = final_sum / n
    return result


@dataclass(frozen=True)
class WriteSetting:
    """A test-time WRITE setting and the exact match it scored."""

    steps: int  # K, inner gradient steps
    lr: float  # inner step size
    exact_match: float


def choose_write_setting(
    model: MemoryModel,
    examples: Sequence[Example],
    steps: Sequence[int],
    lrs: Sequence[float],
    batch_size: int = 64,
) -> tuple[WriteSetting, list[WriteSetting]]:
    """Score every (K, inner lr) of the grid on `examples` and return the best with all scores.

    Pass validation examples, never the test split: the choice is a hyperparameter (the paper's
    test-time extrapolation, Table 3, raises K at evaluation). Ties go to fewer steps, the cheaper
    WRITE, then to the smaller lr.
    """
    if not steps or not lrs:
        raise ValueError("choose_write_setting needs at least one number of steps and one lr")
    scored = [
        WriteSetting(k, lr, float(evaluate(model, examples, batch_size, steps=k, lr=lr)["exact_match"]))
        for k in steps
        for lr in lrs
    ]
    best = max(scored, key=lambda s: (s.exact_match, -s.steps, -s.lr))
    return best, scored
