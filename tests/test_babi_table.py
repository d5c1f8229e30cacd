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
    assert (out / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the error breakdown of the same checkpoint on the same test questions agrees with the table
    with benchmarks_on_path():
        babi_errors = importlib.import_module("babi_errors")
    best = runs / "s0" / "best"
    argv = ["--checkpoint", str(best), "--examples", "6", "--name", "tiny", "--out", str(out), "--device", "cpu"]
    assert babi_errors.main(argv) == 0
    report = json.loads((out / "errors_tiny.json").read_text())["tasks"]
    assert set(report) == {"QA1", "QA4"}
    for task, errors in report.items():
        assert errors["exact_match"] == result["seeds"][0]["em"][task]
        for split in ("by_back", "by_statements"):
            assert sum(row[1] for row in errors[split]) == 6  # every question in one bucket
            right = sum(row[1] * float(row[2]) / 100 for row in errors[split])
            assert right == pytest.approx(6 * errors["exact_match"])
    assert "## QA4: EM" in (out / "errors_tiny.md").read_text()
    assert babi_table.main(["--collect", "--out", str(out)]) == 0  # its file beside the results is skipped
    assert (out / "table.md").read_text() == table
    capsys.readouterr()


def test_error_buckets_count_statements_after_the_evidence():
    from gradmem.tasks.babi_format import BabiQuestion

    with benchmarks_on_path():
        babi_errors = importlib.import_module("babi_errors")
    q = BabiQuestion(
        ("Mary got the milk.", "Mary went to the office.", "John moved to the garden.", "Sandra went to the kitchen."),
        "Where is the milk?",
        "office",
        (0, 1),
    )
    assert babi_errors.statements_back(q) == 3  # three statements after "Mary got the milk."
    assert babi_errors.latest_place(q) == "kitchen"
    no_place = BabiQuestion(("Mary got the milk.",), "What does Mary carry?", "milk", (0,))
    assert babi_errors.statements_back(no_place) == 0 and babi_errors.latest_place(no_place) is None


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
