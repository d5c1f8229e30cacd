"""Exact match and token accuracy on hand-made logits: pads and the target tail never count."""

from __future__ import annotations

import torch

from gradmem.core.batch import Example, collate
from gradmem.evaluation.metrics import exact_match_from_logits, exact_match_generated, token_accuracy

V = 10


def _batch():
    # Row 0: answer [5, 6], tail [7]; row 1: answer [8], no tail, one pad column (pad id 0).
    return collate(
        [
            Example(context=[1], query=[2], target=[5, 6, 7], answer_len=2),
            Example(context=[1], query=[2], target=[8, 3], answer_len=1),
        ]
    )


def _logits(predictions: list[list[int]]) -> torch.Tensor:
    """(B, T, V) logits whose argmax is `predictions`."""
    return torch.nn.functional.one_hot(torch.tensor(predictions), V).float() * 3.0 - 1.0


def test_exact_match_from_logits_scores_only_the_answer() -> None:
    batch = _batch()
    # Answers right; tail wrong in row 0, the second token and the pad wrong in row 1.
    em = exact_match_from_logits(_logits([[5, 6, 0], [8, 9, 4]]), batch)
    assert em.dtype == torch.bool and em.tolist() == [True, True]
    # One wrong answer token makes the whole answer wrong.
    assert exact_match_from_logits(_logits([[5, 1, 7], [2, 3, 0]]), batch).tolist() == [False, False]


def test_exact_match_generated() -> None:
    batch = _batch()
    generated = torch.tensor([[5, 6, 9, 9], [8, -1, -1, -1]])
    assert exact_match_generated(generated, batch).tolist() == [True, True]
    assert exact_match_generated(torch.tensor([[5, 7], [1, 1]]), batch).tolist() == [False, False]
    # Shorter than answer_len: row 0 needs two tokens, got one.
    assert exact_match_generated(torch.tensor([[5], [8]]), batch).tolist() == [False, True]
    # -1 padding inside the answer is wrong.
    assert exact_match_generated(torch.tensor([[5, -1, -1], [8, 0, 0]]), batch).tolist() == [False, True]


def test_token_accuracy_ignores_padding() -> None:
    batch = _batch()
    # Real tokens: row 0 -> 3, row 1 -> 2. The pad position predicts the pad id, which must not count.
    correct, total = token_accuracy(_logits([[5, 0, 7], [8, 1, 0]]), batch)
    assert (int(correct), int(total)) == (3, 5)
    correct, total = token_accuracy(_logits([[5, 6, 7], [8, 3, 0]]), batch)
    assert (int(correct), int(total)) == (5, 5)


def test_generated_rows_stop_at_eos_or_the_stop_marker():
    from gradmem.core.sequence import generated_rows

    out = torch.tensor([[5, 6, 2, -1], [7, -1, -1, -1], [8, 9, 10, 11]])
    assert generated_rows(out, eos_id=2) == [[5, 6], [7], [8, 9, 10, 11]]
    assert generated_rows(out, eos_id=None) == [[5, 6, 2], [7], [8, 9, 10, 11]]
