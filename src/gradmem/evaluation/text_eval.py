"""Scoring free-text answers: greedy generation decoded to strings, then SQuAD EM / F1.

The tensor metrics in `gradmem.evaluation.metrics` compare token ids; SQuAD's official metric compares
normalised strings against several ground truths, so answers are generated and decoded first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gradmem.core.batch import Example, iterate_batches
from gradmem.core.sequence import generated_rows
from gradmem.core.task import Task, Tokenizer
from gradmem.methods.model import MemoryModel
from gradmem.tasks.squad import SquadItem, squad_scores


def generate_answers(
    model: MemoryModel,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    max_new_tokens: int = 16,
    batch_size: int = 16,
    steps: int | None = None,
    lr: float | None = None,
) -> list[str]:
    """Write each example's context, generate greedily from [memory; query] until EOS, decode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str] = []
    with torch.no_grad():
        for batch in iterate_batches(examples, batch_size, tokenizer.pad_id):
            batch = batch.to(device)
            memory = model.write(batch.context, steps=steps, lr=lr)
            out = model.generate(memory, batch.query, max_new_tokens, tokenizer.eos_id)  # (B, T), -1 after stop
            answers += [tokenizer.decode(row).strip() for row in generated_rows(out, tokenizer.eos_id)]
    model.train(was_training)
    return answers


def score_answers(
    model: MemoryModel,
    tokenizer: Tokenizer,
    examples: Sequence[Example],
    answers: Sequence[Sequence[str]],
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    steps: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """SQuAD EM / F1 (%) of the answers generated for `examples` against each one's ground truths;
    `steps` / `lr` override the WRITE's K and inner lr, as in `evaluate`. `max_new_tokens` defaults
    to the longest target, at least 16: a fixed cap scored every longer answer as wrong."""
    if max_new_tokens is None:
        max_new_tokens = max([16, *(len(e.target) for e in examples)])
    predictions = generate_answers(model, tokenizer, examples, max_new_tokens, batch_size, steps, lr)
    return {**squad_scores(predictions, answers), "predictions": predictions}


def evaluate_squad(
    model: MemoryModel,
    task: Task,
    items: Sequence[SquadItem],
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    steps: int | None = None,
) -> dict[str, Any]:
    """SQuAD EM / F1 (%) of generated answers for a QA task's items (squad, qa)."""
    return score_answers(
        model,
        task.tokenizer,
        [task.to_example(i) for i in items],
        [i.answers for i in items],
        max_new_tokens,
        batch_size,
        steps,
    )
