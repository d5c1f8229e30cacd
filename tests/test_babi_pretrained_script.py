"""benchmarks/babi_pretrained.py: the warm-up schedule every method shares, and old records keep matching."""

from __future__ import annotations

import importlib

import pytest
from conftest import benchmarks_on_path


@pytest.fixture(scope="module")
def script():
    with benchmarks_on_path():
        yield importlib.import_module("babi_pretrained")


def test_warmup_stages_are_durations_in_order(script):
    args = script.build_parser().parse_args(["--single-fact-steps", "150", "--two-fact-steps", "100", "--steps", "400"])
    train = script.make_spec(args, "gradmem")["train"]
    assert train["curriculum"] == [
        {"statements_per_question": 1, "questions_per_story": 1},
        {"statements_per_question": 2, "questions_per_story": 1},
        {},
    ]
    assert train["stage_steps"] == [150, 100]  # the trainer reads durations, not end steps


def test_without_warmups_there_is_no_curriculum(script):
    args = script.build_parser().parse_args(["--single-fact-steps", "0"])
    assert "curriculum" not in script.make_spec(args, "rmt")["train"]
    args = script.build_parser().parse_args(["--single-fact-steps", "0", "--two-fact-steps", "50"])
    assert script.make_spec(args, "rmt")["train"]["curriculum"][0]["statements_per_question"] == 2


def test_every_method_gets_the_same_training_settings(script):
    args = script.build_parser().parse_args(["--adam-beta2", "0.95", "--two-fact-steps", "50"])
    trains = [script.make_spec(args, name)["train"] for name in script.METHODS]
    assert all(t == trains[0] for t in trains)
    assert trains[0]["adam_betas"] == [0.9, 0.95]


def test_defaults_of_later_shared_settings_are_the_parser_defaults(script):
    # A record written before a shared setting existed counts as having its default value.
    args = script.build_parser().parse_args([])
    assert set(script.SHARED_DEFAULTS) <= set(script.SHARED)
    assert all(getattr(args, key) == value for key, value in script.SHARED_DEFAULTS.items())


def test_best_valid_step_ignores_the_warmup_stages(script):
    history = [
        {"kind": "eval", "stage": 0, "step": 150, "exact_match": 0.6},
        {"kind": "train", "stage": 1, "step": 160},
        {"kind": "eval", "stage": 1, "step": 200, "exact_match": 0.2},
        {"kind": "eval", "stage": 1, "step": 250, "exact_match": 0.4},
    ]
    assert script.best_valid_step(history) == 250
