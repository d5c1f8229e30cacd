"""benchmarks/time_to_accuracy.py: milestones read off the curriculum, end to end on a tiny run."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import benchmarks_on_path, tiny_run_spec

from gradmem.core.inner_optim import InnerOptimConfig


@pytest.fixture(scope="module")
def tta():
    with benchmarks_on_path():
        yield importlib.import_module("time_to_accuracy")


def test_a_milestone_is_the_first_eval_at_target_on_its_stage(tta):
    records = [
        {"kind": "eval", "stage": 0, "step": 10, "exact_match": 0.95, "elapsed_s": 60},  # 1 pair reached
        {"kind": "train", "stage": 1, "step": 15, "loss": 1.0, "elapsed_s": 80},
        {"kind": "eval", "stage": 1, "step": 20, "exact_match": 0.5, "elapsed_s": 120},
        {"kind": "eval", "stage": 1, "step": 30, "exact_match": 0.91, "elapsed_s": 180},  # 4 pairs reached
        {"kind": "eval", "stage": 1, "step": 40, "exact_match": 0.99, "elapsed_s": 240},  # later: not counted
        {"kind": "eval", "stage": 2, "step": 50, "exact_match": 0.2, "elapsed_s": 300},
    ]
    got = tta.milestones_reached(records, [1, 4, 8], [4, 8], 0.9)
    assert got == {4: {"step": 30, "minutes": 3.0, "exact_match": 0.91}, 8: None}


def test_end_to_end_trains_resumes_and_reports(tta, tmp_path, capsys):
    spec = tiny_run_spec(
        steps=4,
        batch_size=4,
        warmup_steps=1,
        eval_every=2,
        eval_examples=8,
        checkpoint_every=2,
        log_every=1,
        advance_exact_match=0.0,
        curriculum=[{"num_pairs": 1}, {"num_pairs": 2}],
    )
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(spec))
    args = [
        "--config",
        str(config),
        "--seeds",
        "0,1",
        "--milestones",
        "1,2",
        "--target",
        "0.0",
        "--test-examples",
        "10",
        "--eval-steps",
        "0,1",
        "--runs",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert tta.main(args) == 0
    result = json.loads((tmp_path / "out" / "spec.json").read_text())
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    for seed in result["seeds"]:
        # EM >= 0 always holds, so the 1-pair stage is reached at its first eval (step 2) and the run moves on
        assert seed["milestones"]["1"]["step"] == 2 and seed["milestones"]["2"]["step"] == 4
        assert seed["final_stage_pairs"] == 2 and {"test_em_K0", "test_em_K1"} <= set(seed)
    assert (tmp_path / "out" / "spec.png").exists()
    assert "| 0 |" in (tmp_path / "out" / "spec.md").read_text()
    assert tta.main(args) == 0  # finished seeds are skipped, the report rebuilt
    assert "done, skipped" in capsys.readouterr().err


def test_test_pairs_scores_the_final_model_at_other_numbers_of_pairs(tta, tmp_path):
    spec = tiny_run_spec(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_examples=8, log_every=1)
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(spec))  # no curriculum: trained on the task's 2 pairs
    common = ["--config", str(config), "--test-examples", "10", "--eval-steps", "1", "--milestones", "2"]
    common += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    assert tta.main([*common, "--test-pairs", "1,2"]) == 0
    (seed,) = json.loads((tmp_path / "out" / "spec.json").read_text())["seeds"]
    assert {"test_em_N1_K1", "test_em_K1"} <= set(seed)  # the trained 2 pairs keep the old key
    table = (tmp_path / "out" / "spec.md").read_text()
    assert "test EM 1 pairs, K=1" in table and "test EM 2 pairs, K=1" in table


def test_a_method_without_write_steps_is_tested_once_and_named(tta, tmp_path):
    spec = tiny_run_spec(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_examples=8, log_every=1)
    spec["method"] = {"name": "rmt", "num_memory": 2, "steps": 1}  # --eval-steps means nothing to it
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(spec))
    common = ["--config", str(config), "--test-examples", "10", "--eval-steps", "1,2", "--milestones", "2"]
    assert (
        tta.main([*common, "--test-pairs", "1,2", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
        == 0
    )
    (seed,) = json.loads((tmp_path / "out" / "spec.json").read_text())["seeds"]
    assert {"test_em_N1", "test_em"} <= set(seed) and not any("_K" in key for key in seed)
    table = (tmp_path / "out" / "spec.md").read_text()
    assert "(spec; RMT x1;" in table and "| test EM 1 pairs | test EM 2 pairs |" in table


def test_the_kv_memory_is_tested_at_each_k_and_fast_weight_memories_once(tta, tmp_path):
    spec = tiny_run_spec(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_examples=8, log_every=1)
    for method, keys, label in [
        (
            {"name": "kv_prefix", "num_memory": 1, "write": {"steps": 1}},
            {"test_em_K1", "test_em_K2"},
            "KV prefix P = 1 K = 1",
        ),
        ({"name": "ttt_linear", "num_heads": 2}, {"test_em"}, "ttt linear"),
    ]:
        spec["method"] = method
        name = method["name"]
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps(spec))
        args = ["--config", str(config), "--test-examples", "10", "--eval-steps", "1,2", "--milestones", "2"]
        assert tta.main([*args, "--runs", str(tmp_path / name), "--out", str(tmp_path / "out")]) == 0
        (seed,) = json.loads((tmp_path / "out" / f"{name}.json").read_text())["seeds"]
        assert keys == {key for key in seed if key.startswith("test_em")}
        assert f"({name}; {label};" in (tmp_path / "out" / f"{name}.md").read_text()


def test_choose_steps_picks_the_write_on_validation_and_tests_it(tta, tmp_path):
    spec = tiny_run_spec(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_examples=8, log_every=1)
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(spec))
    common = ["--config", str(config), "--test-examples", "10", "--eval-steps", "1", "--milestones", "2"]
    common += ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--valid-examples", "6"]
    assert tta.main([*common, "--choose-steps", "1,2", "--choose-lrs", "0.5,1"]) == 0
    (seed,) = json.loads((tmp_path / "out" / "spec.json").read_text())["seeds"]
    grid = seed["chosen_write_grid"]
    assert [(k, lr) for k, lr, _ in grid] == [(1, 0.5), (1, 1.0), (2, 0.5), (2, 1.0)]
    chosen = seed["chosen_write"]
    assert chosen["valid_em"] == max(em for _, _, em in grid)
    assert 0.0 <= seed["test_em_chosen"] <= 1.0
    row = (tmp_path / "out" / "spec.md").read_text()
    assert "WRITE chosen on validation" in row and f"(K={chosen['steps']}, lr {chosen['lr']:g})" in row
    assert tta.main([*common, "--choose-steps", "1", "--report-only"]) == 0  # no --choose-lrs: the trained lr
    (seed,) = json.loads((tmp_path / "out" / "spec.json").read_text())["seeds"]
    assert [lr for _, lr, _ in seed["chosen_write_grid"]] == [InnerOptimConfig().lr]  # the spec sets none


def test_a_method_without_write_steps_gets_no_chosen_write(tta, tmp_path):
    spec = tiny_run_spec(steps=2, batch_size=4, warmup_steps=1, eval_every=2, eval_examples=8, log_every=1)
    spec["method"] = {"name": "rmt", "num_memory": 2, "steps": 1}
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(spec))
    args = ["--config", str(config), "--test-examples", "10", "--milestones", "2", "--choose-steps", "1,2"]
    assert tta.main([*args, "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    (seed,) = json.loads((tmp_path / "out" / "spec.json").read_text())["seeds"]
    assert "chosen_write" not in seed
    assert "WRITE chosen" not in (tmp_path / "out" / "spec.md").read_text()


@pytest.mark.parametrize("bad", [["--choose-steps", "-1"], ["--choose-steps", "2", "--choose-lrs", "0.5,nan"]])
def test_a_bad_write_grid_is_a_usage_error_before_any_work(tta, tmp_path, bad, capsys):
    with pytest.raises(SystemExit) as stop:
        tta.main(["--config", str(tmp_path / "unread.json"), *bad])
    assert stop.value.code == 2 and "--choose-lrs > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--minutes", "0"], "--minutes must be a positive number"),
        (["--target", "90"], "exact-match fraction"),  # 90 % meant as 90: never reached
        (["--test-examples", "0"], "--test-examples: must be >= 1"),
        (["--valid-examples", "0"], "--valid-examples: must be >= 1"),
        (["--threads", "0"], "--threads: must be >= 1"),
        (["--eval-steps", "-1"], "--eval-steps must be >= 0"),
        (["--test-pairs", "0"], "--test-pairs >= 1"),
        ([], "cannot read --config"),  # the config below does not exist
    ],
)
def test_a_bad_option_is_a_usage_error_before_any_training(tta, tmp_path, bad, message, capsys):
    with pytest.raises(SystemExit) as stop:
        tta.main(["--config", str(tmp_path / "missing.json"), "--runs", str(tmp_path / "runs"), *bad])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
