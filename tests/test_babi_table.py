"""benchmarks/babi_table.py: a tiny bAbI mix trained over two seeds, scored per task, collected."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import benchmarks_on_path


@pytest.fixture(scope="module")
def babi_table():
    with benchmarks_on_path():
        yield importlib.import_module("babi_table")


def tiny_babi_spec(tasks: list[int]) -> dict:
    return {
        "task": {"name": "babi", "task": tasks, "tokenizer": {"type": "word", "vocab": "babi"}},
        "backbone": {"name": "llama", "num_layers": 1, "num_heads": 2, "hidden_size": 16, "intermediate_size": 32},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1, "optim": {"name": "sgd", "lr": 1.0}}},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 2,
            "eval_examples": 8,
            "checkpoint_every": 2,
            "log_every": 1,
            "advance_exact_match": 0.0,
            "curriculum": [{"statements_per_question": 1, "questions_per_story": 1}, {}],
            "device": "cpu",
        },
    }


def test_trains_scores_every_task_of_a_mix_and_collects(babi_table, tmp_path, capsys):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(tiny_babi_spec([1, 4])))
    out, runs = tmp_path / "results", tmp_path / "runs"
    common = ["--config", str(config), "--name", "mix", "--test-examples", "6", "--runs", str(runs), "--out", str(out)]
    assert babi_table.main([*common, "--seeds", "0,1", "--eval-steps", "0,1", "--device", "cpu"]) == 0
    result = json.loads((out / "mix.json").read_text())
    assert [r["seed"] for r in result["seeds"]] == [0, 1]
    for row in result["seeds"]:
        assert set(row["em"]) == {"QA1", "QA1 K=0", "QA4", "QA4 K=0"}  # the trained K=1 is the plain column
        assert all(0.0 <= em <= 1.0 for em in row["em"].values())
        assert row["steps"] == 4 and row["stages"] == 2
    assert (runs / "s0" / "done.json").exists()
    # a rerun trains nothing (done), and --report-only rescoring gives the same numbers
    assert babi_table.main([*common, "--report-only", "--eval-steps", "0,1", "--device", "cpu"]) == 0
    assert json.loads((out / "mix.json").read_text())["seeds"] == result["seeds"]
    assert babi_table.main(["--collect", "--out", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "GradMem m=2, K=1 | QA1+QA4 |" in table and "paper: GradMem m=8, K 1-2" in table
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--config is required"),
        (["--config", "missing.json"], "cannot read --config"),
        (["--config", "SPEC", "--minutes", "0"], "--minutes must be a positive number"),
    ],
)
def test_bad_options_are_usage_errors(babi_table, tmp_path, capsys, argv, message):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(tiny_babi_spec([1])))
    with pytest.raises(SystemExit) as exit_info:
        babi_table.main([str(config) if a == "SPEC" else a for a in argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_spec_of_another_task_is_refused(babi_table, tmp_path, capsys):
    config = tmp_path / "kv.json"
    config.write_text(json.dumps({"task": {"name": "kv"}}))
    with pytest.raises(SystemExit):
        babi_table.main(["--config", str(config)])
    assert "not a bAbI run spec" in capsys.readouterr().err
