"""The command line end to end: a 2-step training run against recorded losses, eval, write, ask,
inspect, store, data."""

from __future__ import annotations

import io
import json

import pytest
import torch
from test_checkpoint import SPEC

from gradmem.cli.main import main
from gradmem.core.batch import load_jsonl, pad_right
from gradmem.core.memory_file import load_memory
from gradmem.evaluation.evaluate import evaluate
from gradmem.run.checkpoint import load_checkpoint

# Recorded from `gradmem train` on this spec (torch 2.13 CPU, float32); a change here means the
# method's numerics changed and must be explained.
GOLDEN_LOSSES = [4.195992469787598, 4.168677806854248]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def test_two_step_training_matches_recorded_losses(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=2", "train.eval_every=2"]) == 0
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=1e-4)
    assert (out / "last" / "model.safetensors").exists() and (out / "best" / "spec.json").exists()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2


def test_write_then_ask_without_the_context(config, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=1"])
    context = tmp_path / "ctx.txt"
    context.write_text("!ab:cd!!ef:gh!|\n")
    store = ["--store", str(tmp_path / "store")]
    assert main(["write", str(out / "last"), "--context", str(context), "--out", str(tmp_path / "mem"), *store]) == 0
    captured = capsys.readouterr()
    written = json.loads(captured.out.strip().splitlines()[-1])
    assert written["context_tokens"] == 15 and len(written["write_loss"]) == 1 and written["created"]
    assert "step 0/1" in captured.err and "final" in captured.err  # progress: each step's loss
    assert not list(tmp_path.glob("*.partial"))  # --out copies land whole, then are renamed in
    assert (
        main(["ask", str(out / "last"), "--memory", str(tmp_path / "mem"), "-q", "?!ab:", "-q", "?!ef:", *store]) == 0
    )
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [a["query"] for a in answers] == ["?!ab:", "?!ef:"]
    model, task, _ = load_checkpoint(out / "last")
    memory, _ = load_memory(tmp_path / "mem", model)
    with torch.no_grad():  # the answers by hand: greedy decode of 8 tokens from the memory file
        ids = model.generate(memory.repeat(2), pad_right([task.tokenizer.encode(q) for q in ("?!ab:", "?!ef:")]), 8)
    assert [a["answer"] for a in answers] == [task.tokenizer.decode(row.tolist()) for row in ids]
    # the same text from stdin, and saved with a byte-order mark: found in the store by its id
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeff!ab:cd!!ef:gh!|"))
    assert main(["write", str(out / "last"), *store]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["id"] == written["id"] and not again["created"]
    context.write_bytes(b"\xef\xbb\xbf!ab:cd!!ef:gh!|\r\n")
    assert main(["write", str(out / "last"), "--context", str(context), "--quiet", *store]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"] == written["id"]
    assert main(["ask", str(out / "last"), written["id"], "-q", "?!ab:", *store]) == 0
    assert [json.loads(line)["answer"] for line in capsys.readouterr().out.strip().splitlines()] == [
        answers[0]["answer"]
    ]
    assert main(["inspect", str(out / "last"), written["id"], "--json", *store]) == 0
    report = json.loads(capsys.readouterr().out)
    decoded, context = report["reconstruction"], "!ab:cd!!ef:gh!|"
    assert len(decoded) == 15 and report["token_accuracy"] == pytest.approx(sum(map(str.__eq__, decoded, context)) / 15)
    assert main(["inspect", str(out / "last"), written["id"], *store]) == 0
    assert "greedy token accuracy" in capsys.readouterr().out
    assert main(["store", "list", *store]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == written["id"]
    assert main(["store", "delete", written["id"], *store]) == 0
    assert main(["store", "delete", written["id"], *store]) == 2
    assert "no memory" in capsys.readouterr().err


def test_eval_sweeps_write_steps(config, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=1"])
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                str(out / "last"),
                "--examples",
                "10",
                "--steps",
                "0,2",
                "--generate",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["write_steps"] for r in rows] == [0, 2]
    assert len(rows[0]["write_loss"]) == 0 and len(rows[1]["write_loss"]) == 2
    model, task, spec = load_checkpoint(out / "last")  # the same scores in-process, on the same examples
    examples = task.make_split("test", 10, spec.get("train", {}).get("seed", 0))
    expected = evaluate(model, examples, 100, steps=2, generate=True, pad_id=task.tokenizer.pad_id)
    assert rows[1]["generated_exact_match"] == expected["generated_exact_match"]
    assert rows[1]["exact_match"] == expected["exact_match"] and rows[1]["loss"] == pytest.approx(expected["loss"])


def test_eval_sweeps_steps_by_inner_lr(config, tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=1"])
    capsys.readouterr()
    assert main(["eval", str(out / "last"), "--examples", "6", "--steps", "1,2", "--lr", "0.5,2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["write_steps"], r["write_lr"]) for r in rows] == [(1, 0.5), (1, 2.0), (2, 0.5), (2, 2.0)]
    model, task, spec = load_checkpoint(out / "last")
    examples = task.make_split("test", 6, spec.get("train", {}).get("seed", 0))
    assert rows[3]["loss"] == pytest.approx(evaluate(model, examples, 100, steps=2, lr=2.0)["loss"])
    assert rows[3]["write_loss"] != rows[2]["write_loss"]  # the lr reached the WRITE
    assert main(["eval", str(out / "last"), "--examples", "6", "--lr", "-1"]) == 2
    assert "lr" in capsys.readouterr().err
    # an infinite step printed Infinity / NaN, which is not JSON
    assert main(["eval", str(out / "last"), "--examples", "6", "--lr", "inf"]) == 2
    assert "lr must be > 0 and finite, got inf" in capsys.readouterr().err


def test_data_export(config, tmp_path):
    path = tmp_path / "valid.jsonl"
    assert main(["data", "--config", str(config), "-n", "5", "--out", str(path)]) == 0
    examples = load_jsonl(path)
    assert len(examples) == 5 and len(examples[0].context) == 2 * 7 + 1


def test_malformed_config_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SPEC, "method": {"name": "gradmem", "num_memory": 0}}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "num_memory must be >= 1" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "cannot read config" in capsys.readouterr().err
