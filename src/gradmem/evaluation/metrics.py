"""Answer metrics on tensors: exact match (teacher-forced or generated) and token accuracy.

Targets are right-padded (see `gradmem.core.batch`), so every metric scores only real positions:
exact match looks at the first `answer_len` target tokens, token accuracy at the first `lengths`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradmem.core.batch import Batch


def _positions_below(limit: Tensor, width: int) -> Tensor:
    """(B, width) bool, True where position < limit[b]."""
    positions = torch.arange(width, device=limit.device)
    return positions[None, :] < limit[:, None]


def _check_logits(logits: Tensor, batch: Batch) -> None:
    targets = batch.target.ids
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be (B, Ty, V) with (B, Ty) = {tuple(targets.shape)}")


def exact_match_from_logits(logits: Tensor, batch: Batch) -> Tensor:
    """Teacher-forced exact match per example.

    Args:
        logits: (B, Ty, V); `logits[b, t]` predicts `batch.target.ids[b, t]`.
        batch: the batch whose targets and `answer_len` are scored.

    Returns:
        (B,) bool, True iff the argmax is right on all of the first `answer_len[b]` target tokens.
    """
    _check_logits(logits, batch)
    targets = batch.target.ids  # (B, Ty)
    scored = _positions_below(batch.answer_len.to(targets.device), targets.shape[1])  # (B, Ty)
    right = logits.argmax(dim=-1) == targets  # (B, Ty)
    # Positions past the answer are vacuously right, so pads and the `!|` tail never count.
    return (right | ~scored).all(dim=1)


def exact_match_generated(generated: Tensor, batch: Batch) -> Tensor:
    """Exact match of greedily generated tokens per example.

    Args:
        generated: (B, T) long, token ids produced after the query; rows may be padded with -1.
        batch: the batch whose targets and `answer_len` are scored.

    Returns:
        (B,) bool, True iff the first `answer_len[b]` generated tokens equal the target's.
        A generation shorter than `answer_len` (or ending in -1 padding too early) is wrong.
    """
    targets = batch.target.ids  # (B, Ty)
    if generated.dim() != 2 or generated.shape[0] != targets.shape[0]:
        raise ValueError(f"generated {tuple(generated.shape)} must be (B, T) with B = {targets.shape[0]}")
    width = targets.shape[1]
    generated = generated.to(targets.device)
    if generated.shape[1] < width:
        # -1 matches no token id, so a too-short generation cannot pass.
        filler = generated.new_full((generated.shape[0], width - generated.shape[1]), -1)
        generated = torch.cat([generated, filler], dim=1)
    right = generated[:, :width] == targets  # (B, Ty)
    scored = _positions_below(batch.answer_len.to(targets.device), width)  # (B, Ty)
    return (right | ~scored).all(dim=1)


def token_accuracy(logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Teacher-forced token accuracy over every real target token (answer and tail).

    Args:
        logits: (B, Ty, V); `logits[b, t]` predicts `batch.target.ids[b, t]`.
        batch: the batch whose targets and `target.lengths` are scored.

    Returns:
        (correct, total): 0-dim long tensors, summed over the batch so callers can accumulate them.
    """
    _check_logits(logits, batch)
    targets = batch.target.ids  # (B, Ty)
    real = _positions_below(batch.target.lengths.to(targets.device), targets.shape[1])  # (B, Ty)
    right = (logits.argmax(dim=-1) == targets) & real
    return right.sum(), real.sum()
