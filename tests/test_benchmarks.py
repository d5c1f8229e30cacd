"""The benchmark scripts run end to end on a tiny setting: cells are trained, saved, skipped on a
rerun, chained across N, and summarised into JSON, Markdown and PNG."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, benchmarks_on_path

from gradmem.evaluation.evaluate import evaluate
from gradmem.run.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def scripts():
    with benchmarks_on_path():
        yield importlib.import_module("capacity"), importlib.import_module("write_steps")


PRESET = {
    "name": "tiny",
    "base": {
        "task": {"name": "kv", "num_pairs": 1},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": {
            "steps": 3,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 2,
            "eval_examples": 8,
            "checkpoint_every": 2,
            "log_every": 1,
        },
    },
    "methods": [
        {"key": "gm_k1", "label": "GradMem K=1", "method": {}},
        {"key": "gm_k2", "label": "GradMem K=2", "method": {"write": {"steps": 2}}, "init_from": "gm_k1"},
        {"key": "rmt", "label": "RMT x1", "method": {"name": "rmt", "num_memory": 2}},
        {"key": "full", "label": "full context", "method": {"name": "full_context"}, "ramp": None},
    ],
    "pairs": [1, 2],
    "seeds": [0],
    "ramp": [1, 2],
    "chain_pairs": True,
    "test_examples": 20,
    "test_seed": 5,
}


def test_capacity_end_to_end_resumable(scripts, tmp_path, capsys):
    capacity, write_steps = scripts
    preset_path = tmp_path / "preset.json"
    preset_path.write_text(json.dumps(PRESET))
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--preset", str(preset_path), "--out", str(out), "--runs", str(runs)]
    assert capacity.main(argv) == 0
    cells = sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert cells == sorted(f"{m}_N{n}_s0" for m in ("gm_k1", "gm_k2", "rmt", "full") for n in (1, 2))
    for name in ("results.json", "table.md", "capacity.png", "curves.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "results.json").read_text())
    by_name = {f"{c['method']}_N{c['pairs']}": c for c in summary["cells"]}
    assert by_name["gm_k1_N2"]["init_from"] == "gm_k1_N1_s0"  # grow N from the previous N
    assert by_name["gm_k2_N1"]["init_from"] == "gm_k1_N1_s0"  # then raise K
    assert by_name["gm_k1_N1"]["state_floats"] == 2 * 16 and by_name["rmt_N2"]["state_floats"] == 2 * 16
    assert by_name["full_N2"]["state_floats"] == 2 * 2 * 15 * 16  # KV cache of the 15-token context
    for cell in summary["cells"]:
        assert cell["test_examples"] == 20 and cell["train_steps"] == 3
    # a cell's scores are evaluate's on its checkpoint and the preset's test set
    cell = by_name["gm_k2_N2"]
    model, task, _ = load_checkpoint(runs / "gm_k2_N2_s0" / cell["checkpoint"])
    scored = evaluate(model, task.make_split("test", 20, 5), 250, pad_id=task.tokenizer.pad_id)
    assert (cell["exact_match"], cell["test_loss"]) == (scored["exact_match"], scored["loss"])
    table = (out / "table.md").read_text()
    assert "| GradMem K=2 |" in table and "N=2" in table

    # a rerun (even with more methods asked for) skips every finished cell
    before = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    capsys.readouterr()
    assert capacity.main(argv) == 0
    assert {p.name: p.read_text() for p in (out / "cells").glob("*.json")} == before
    assert capsys.readouterr().err.count("skip") == len(before)

    # test-time write steps on one trained checkpoint
    ws_out = tmp_path / "ws"
    assert (
        write_steps.main(
            [f"K2={runs / 'gm_k2_N2_s0' / 'last'}", "--k-eval", "0,1,3", "--examples", "10", "--out", str(ws_out)]
        )
        == 0
    )
    result = json.loads((ws_out / "results.json").read_text())
    assert [r["k_eval"] for r in result["runs"]["K2"]["results"]] == [0, 1, 3]
    assert result["runs"]["K2"]["trained_k"] == 2 and (ws_out / "heatmap.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no write steps"):
        write_steps.main([str(runs / "full_N1_s0" / "last"), "--out", str(ws_out)])


def test_cell_spec_merges_method_overrides(scripts):
    capacity, _ = scripts
    gm = capacity.cell_spec(PRESET, PRESET["methods"][1], 2, 3, 0)
    assert gm["method"]["write"]["steps"] == 2 and gm["method"]["num_memory"] == 2  # refined base method
    assert gm["task"]["num_pairs"] == 2 and gm["train"]["seed"] == 3
    assert gm["train"]["curriculum"] == [{"num_pairs": 1}, {"num_pairs": 2}]
    rmt = capacity.cell_spec(PRESET, PRESET["methods"][2], 2, 0, 1)
    assert rmt["method"] == {"name": "rmt", "num_memory": 2}  # another method starts from its own settings
    assert rmt["train"]["curriculum"] == [{"num_pairs": 2}]  # chained from N=1: the ramp starts above it
    assert "curriculum" not in capacity.cell_spec(PRESET, PRESET["methods"][3], 2, 0, 0)["train"]


def test_write_probe_separates_a_linear_signal_and_not_noise():
    with benchmarks_on_path():
        probe = importlib.import_module("write_probe")
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (200,), generator=gen)
    noise = torch.randn(200, 32, generator=gen)
    signal = noise.clone()
    signal[:, :4] += 3 * torch.nn.functional.one_hot(labels, 4)  # the class sits in 4 of 32 directions
    assert probe.probe_accuracy(signal, labels, fit=150) > 0.75  # Bayes rate ~0.96
    assert probe.probe_accuracy(noise, labels, fit=150) < 0.5  # chance is ~0.25


def test_every_gradmem_import_of_the_scripts_resolves():
    """Scripts import gradmem lazily inside main() too, where a moved module only fails when the
    script runs: every `from gradmem... import name` in benchmarks/ and scripts/ must resolve."""
    root = Path(__file__).resolve().parent.parent
    missing = []
    for path in sorted([*root.glob("benchmarks/*.py"), *root.glob("scripts/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gradmem":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
    assert not missing, missing
