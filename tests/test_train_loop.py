"""The trainer's decisions with known values: lr schedules, curriculum advance on EM, early stopping,
the target EM."""

from __future__ import annotations

import math

import pytest
from test_checkpoint import SPEC

from gradmem.run.build import build_model
from gradmem.training.trainer import TrainConfig, Trainer, lr_factor


def test_cosine_and_linear_schedules_have_known_values() -> None:
    cos = TrainConfig(steps=110, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    lin = TrainConfig(steps=110, warmup_steps=10, schedule="linear", min_lr_ratio=0.1)
    assert lr_factor(0, cos) == pytest.approx(0.1) and lr_factor(4, lin) == pytest.approx(0.5)  # warmup (step+1)/10
    assert lr_factor(10, cos) == pytest.approx(1.0) and lr_factor(10, lin) == pytest.approx(1.0)
    assert lr_factor(60, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))  # halfway: 0.55
    assert lr_factor(60, lin) == pytest.approx(0.55)
    assert lr_factor(35, cos) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(35, lin) == pytest.approx(1 - 0.9 * 0.25)
    assert lr_factor(110, cos) == pytest.approx(0.1) and lr_factor(500, lin) == pytest.approx(0.1)  # floor
    assert lr_factor(60, TrainConfig(steps=110, warmup_steps=10)) == 1.0  # constant
    assert lr_factor(30, lin, decay=(20, 40)) == pytest.approx(0.55)  # a decay window of its own


def trainer(tmp_path, **train) -> Trainer:
    spec = {**SPEC, "train": {**SPEC["train"], **train}}
    return Trainer.from_spec(build_model(spec), spec, tmp_path)


def test_curriculum_advances_on_exact_match_only(tmp_path) -> None:
    t = trainer(tmp_path, curriculum=[{"num_pairs": 1}, {"num_pairs": 2}], advance_exact_match=0.8)
    assert t._after_eval(0.79, last_stage=1) is False and t.stage == 0
    t.step = 30
    assert t._after_eval(0.8, last_stage=1) is False and t.stage == 1 and t.last_stage_start == 30
    assert (t.best, t.bad_evals) == (-1.0, 0)  # a new stage starts its own best


def test_early_stopping_counts_evaluations_without_improvement(tmp_path) -> None:
    t = trainer(tmp_path, early_stop_patience=2)
    decisions = [t._after_eval(em, last_stage=0) for em in (0.5, 0.6, 0.6, 0.55)]
    assert decisions == [False, False, False, True] and t.best == 0.6
    assert (tmp_path / "best" / "model.safetensors").exists()  # the best was saved when it improved


def test_target_exact_match_stops_training(tmp_path) -> None:
    t = trainer(tmp_path, target_exact_match=0.7)
    assert [t._after_eval(em, last_stage=0) for em in (0.5, 0.69, 0.7)] == [False, False, True]
