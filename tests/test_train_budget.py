"""A time budget for training (`train.max_minutes`), counted across resumes."""

from __future__ import annotations

import math
import time

import pytest
from conftest import tiny_run_spec

from gradmem.run.build import build_model
from gradmem.run.overrides import apply_overrides
from gradmem.run.saved_state import load_trainer_state
from gradmem.training.trainer import TrainConfig, Trainer

SPEC = tiny_run_spec(steps=50, batch_size=4, eval_every=25, eval_examples=8, checkpoint_every=25, log_every=1, seed=3)


def test_the_budget_stops_and_saves_and_a_resume_keeps_counting(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def tick(record):  # every training step costs 6 "seconds", evaluations nothing
        clock[0] += 6.0 if record["kind"] == "train" else 0.0

    spec = apply_overrides(SPEC, ["train.max_minutes=0.5"])  # 30 s: five steps
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, on_log=tick)
    final = trainer.train()
    assert trainer.step == 5
    assert final["kind"] == "eval" and final["step"] == 5  # the budget's end is evaluated...
    assert load_trainer_state(tmp_path / "last")["step"] == 5  # ...and saved

    spec = apply_overrides(SPEC, ["train.max_minutes=1"])  # the same run given 30 s more
    resumed = Trainer.from_spec(build_model(spec), spec, tmp_path, on_log=tick)
    assert resumed.resume()
    resumed.train()
    assert resumed.step == 10
    times = [r["elapsed_s"] for r in resumed.history if r["kind"] == "train"]
    assert times[0] >= 30 and times == sorted(times)  # counted on from the first sitting


@pytest.mark.parametrize("bad", [0, -1, float("inf")])
def test_a_budget_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="max_minutes"):
        TrainConfig(max_minutes=bad)


def test_last_stage_steps_ends_the_run_and_spreads_the_decay_over_the_last_stage(tmp_path):
    # advance_exact_match 0: the first evaluation (step 2) moves to the last stage, which then
    # trains 4 steps whatever `steps` says, the cosine decay running over exactly those 4 steps.
    spec = apply_overrides(
        SPEC,
        [
            'train.curriculum=[{"num_pairs": 1}, {"num_pairs": 2}]',
            "train.advance_exact_match=0",
            "train.eval_every=2",
            "train.steps=100",
            "train.last_stage_steps=4",
            "train.schedule=cosine",
            "train.warmup_steps=1",
            "train.min_lr_ratio=0.1",
            "train.lr=0.01",
        ],
    )
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)
    trainer.train()
    assert trainer.step == 6 and trainer.last_stage_start == 2
    lrs = {r["step"]: r["lr"] for r in trainer.history if r["kind"] == "train"}
    # the lr of step s is set before it; step 1 is warmup's last, step 2 the first stage's peak
    assert lrs[1] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.01) and lrs[3] == pytest.approx(0.01)
    assert lrs[4] > lrs[5] > lrs[6] > 0.001  # decaying toward the floor over the last stage
    assert load_trainer_state(tmp_path / "last")["last_stage_start"] == 2


def test_a_last_stage_until_the_budget_decays_over_the_time_left_and_resumes_on_the_clock(tmp_path, monkeypatch):
    # Every step costs 6 "seconds"; the first evaluation (step 2, 12 s) moves to the last stage,
    # which then has 60 - 12 = 48 s: 8 steps, the cosine decay spread over them by time, not steps.
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])

    def tick(record):
        clock[0] += 6.0 if record["kind"] == "train" else 0.0

    overrides = [
        'train.curriculum=[{"num_pairs": 1}, {"num_pairs": 2}]',
        "train.advance_exact_match=0",
        "train.eval_every=2",
        "train.max_minutes=1",
        "train.last_stage_until_budget=true",
        "train.schedule=cosine",
        "train.warmup_steps=1",
        "train.min_lr_ratio=0.1",
        "train.lr=0.01",
    ]
    spec = apply_overrides(SPEC, [*overrides, "train.steps=5"])  # a first sitting cut short at step 5
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, on_log=tick)
    trainer.train()
    assert trainer.step == 5 and trainer.stage_start_s == pytest.approx(12.0)
    assert load_trainer_state(tmp_path / "last")["stage_start_s"] == pytest.approx(12.0)

    spec = apply_overrides(SPEC, [*overrides, "train.steps=1000"])  # resumed: the schedule goes on by the clock
    resumed = Trainer.from_spec(build_model(spec), spec, tmp_path, on_log=tick)
    assert resumed.resume() and resumed.stage_start_s == pytest.approx(12.0)
    resumed.train()
    assert resumed.step == 10  # 60 s of 6-second steps: the budget, not `steps`, ended the run
    lrs = {r["step"]: r["lr"] for r in trainer.history + resumed.history if r["kind"] == "train"}
    assert lrs[2] == lrs[3] == pytest.approx(0.01)  # peak until the last stage's first step is done
    for step in range(4, 11):  # step s runs with the lr set at 6 (s - 1) seconds, 6 (s - 3) into the stage
        progress = 6 * (step - 3) / 48
        assert lrs[step] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))


@pytest.mark.parametrize("extra", [{}, {"max_minutes": 5, "last_stage_steps": 100}])
def test_a_last_stage_until_the_budget_needs_a_budget_and_no_step_count(extra):
    with pytest.raises(ValueError, match="last_stage_until_budget needs max_minutes"):
        TrainConfig(last_stage_until_budget=True, **extra)


def test_max_stage_steps_moves_on_from_a_stage_stuck_below_the_advance_threshold(tmp_path):
    # advance_exact_match 1 (every example exact) is not met in a few steps: without the cap the run
    # would stay on stage 0
    spec = apply_overrides(
        SPEC,
        [
            'train.curriculum=[{"num_pairs": 1}, {"num_pairs": 2}, {"num_pairs": 3}]',
            "train.advance_exact_match=1",
            "train.eval_every=2",
            "train.steps=10",
            "train.max_stage_steps=4",
        ],
    )
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)
    trainer.train()
    stages = {r["step"]: r["stage"] for r in trainer.history if r["kind"] == "eval"}
    assert stages == {2: 0, 4: 0, 6: 1, 8: 1, 10: 2}  # each evaluated stage, then left after 4 steps
    assert trainer.last_stage_start == 8
    assert load_trainer_state(tmp_path / "last")["stage_start"] == 8


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("log_every", 0, "log_every must be >= 1"),  # was a ZeroDivisionError at the first step
        ("eval_examples", 0, "eval_examples must be >= 1"),  # was an error at the first evaluation
        ("eval_batch_size", 0, "eval_batch_size must be >= 1"),
        ("early_stop_patience", 0, "early_stop_patience"),  # stopped at the first evaluation
        ("grad_clip", -1.0, "grad_clip must be >= 0"),  # clip_grad_norm_ with -1 flips every gradient
        ("advance_exact_match", 90, "exact-match fraction"),  # 90 % meant as 90: never advances
        ("target_exact_match", 1.5, "exact-match fraction"),
    ],
)
def test_settings_that_would_fail_late_or_silently_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_max_stage_steps_must_be_positive():
    with pytest.raises(ValueError, match="max_stage_steps"):
        TrainConfig(max_stage_steps=0)
    with pytest.raises(ValueError, match="compile_stages"):
        TrainConfig(compile_stages="first")
