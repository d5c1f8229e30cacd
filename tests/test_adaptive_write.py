"""Adaptive writes: with a target loss each example stops once it reaches it, inside a batch."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from gradmem.core.batch import pad_right


def gradmem_write(model, rows, steps, target_loss=None, lr=5.0):
    """(written prefix (B, m, D), stats) through the model's own WRITE."""
    with torch.no_grad():
        memory = model.write(pad_right(rows), steps=steps, lr=lr, measure_final=True, target_loss=target_loss)
    return memory.prefix, memory.stats


ROWS = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [20, 21, 22, 23, 24, 25, 26, 27]]


def test_frozen_examples_equal_writing_them_alone_with_their_steps():
    model = tiny_model(dtype=torch.float64)
    _, free = gradmem_write(model, ROWS, steps=6)
    curve = free.losses  # (K, B) loss before each step
    # a target between the curves' values makes examples stop after different numbers of steps
    target = float(curve[2].median())
    params, stats = gradmem_write(model, ROWS, steps=6, target_loss=target)
    taken = stats.steps_taken.tolist()
    assert len(set(taken)) > 1, f"the target should split the batch, steps taken {taken}"
    for b, row in enumerate(ROWS):
        alone, alone_stats = gradmem_write(model, [row], steps=taken[b])
        assert torch.allclose(params[b], alone[0], atol=1e-10), f"example {b} took {taken[b]} steps"
        if taken[b] < 6:  # it stopped because it reached the target
            assert float(stats.final_loss[b]) <= target
        assert float(stats.final_loss[b]) == pytest.approx(float(alone_stats.final_loss[0]), abs=1e-10)


def test_loop_stops_early_once_every_example_reached_the_target():
    model = tiny_model(dtype=torch.float64)
    _, free = gradmem_write(model, ROWS, steps=4)
    target = float(free.losses[1].max()) + 1e-9  # everyone is there after one step
    _, stats = gradmem_write(model, ROWS, steps=50, target_loss=target)
    assert stats.steps_taken.tolist() == [1, 1, 1]
    assert stats.losses.shape == (1, 3)  # one step ran, then the loop stopped
    assert bool((stats.final_loss <= target).all())


def test_without_target_every_example_takes_all_steps():
    model = tiny_model()
    a, sa = gradmem_write(model, ROWS, steps=3)
    b, sb = gradmem_write(model, ROWS, steps=3, target_loss=-1.0)  # unreachable target
    assert torch.equal(a, b) and sa.steps_taken.tolist() == [3, 3, 3]
