"""choose_write_setting: the test-time WRITE (K, inner lr) grid scored on held-out examples."""

from __future__ import annotations

import importlib

import pytest
from conftest import tiny_model

from gradmem.evaluation.evaluate import choose_write_setting, evaluate
from gradmem.tasks.kv import KVConfig, generate_kv


def test_every_setting_is_scored_as_evaluate_scores_it():
    model = tiny_model()
    examples = generate_kv(KVConfig(num_pairs=2), 12, seed=3)
    best, grid = choose_write_setting(model, examples, steps=[1, 2], lrs=[0.5, 2.0], batch_size=5)
    assert [(s.steps, s.lr) for s in grid] == [(1, 0.5), (1, 2.0), (2, 0.5), (2, 2.0)]
    for s in grid:
        assert s.exact_match == evaluate(model, examples, 5, steps=s.steps, lr=s.lr)["exact_match"]
    assert best.exact_match == max(s.exact_match for s in grid)


def test_evaluate_reports_each_scored_batch_for_a_progress_bar():
    examples = generate_kv(KVConfig(num_pairs=2), 12, seed=3)
    seen: list[int] = []
    evaluate(tiny_model(), examples, 5, on_batch=seen.append)
    assert seen == [5, 5, 2]


def test_the_best_wins_and_ties_go_to_fewer_steps_then_the_smaller_lr(monkeypatch):
    scores = {(1, 0.5): 0.2, (1, 1.0): 0.7, (3, 0.5): 0.9, (3, 1.0): 0.9, (5, 0.5): 0.9, (5, 1.0): 0.8}
    # choose_write_setting looks `evaluate` up in its own module at call time: patch it there
    module = importlib.import_module("gradmem.evaluation.evaluate")
    monkeypatch.setattr(
        module, "evaluate", lambda model, examples, batch_size, steps, lr: {"exact_match": scores[steps, lr]}
    )
    best, _ = choose_write_setting(None, [None], steps=[5, 3, 1], lrs=[1.0, 0.5])  # type: ignore[arg-type]
    assert (best.steps, best.lr, best.exact_match) == (3, 0.5, 0.9)


def test_an_empty_grid_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        choose_write_setting(tiny_model(), [], steps=[], lrs=[1.0])
