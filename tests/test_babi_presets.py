"""Experiment presets: the bAbI presets give exactly the run specs of the README's table (as recorded in
results/pretrained/), the script's flags build those presets, and the generic preset runner trains,
scores (its rows equal evaluate on the saved checkpoint), saves and skips cells."""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import pytest
from conftest import TINY, benchmarks_on_path

from gradmem.evaluation.evaluate import evaluate
from gradmem.run.checkpoint import load_checkpoint
from gradmem.run.train_config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
# README bAbI table: column -> (preset, the record of the runs that gave its numbers, the script's flags)
COLUMNS = {
    "one-fact warm-up": ("babi_qa1_full_cpu", []),
    "two-statement stage": ("babi_qa1_ramp_cpu", ["--two-fact-steps", "300", "--steps", "750", "--adam-beta2", "0.95"]),
}


@pytest.fixture(scope="module")
def scripts():
    with benchmarks_on_path():
        yield importlib.import_module("babi_pretrained"), importlib.import_module("run_preset")


def _preset(name: str) -> dict:
    return json.loads((ROOT / "configs" / f"{name}.json").read_text())


def _as_run_today(spec: dict) -> dict:
    """A recorded spec in today's terms: `name` is the backbone's discriminator (`type` still read), the
    M0 the script set by hand after build_model is method.init, and a run recorded before adam_betas was
    a flag used the trainer's default."""
    spec = copy.deepcopy(spec)
    spec["backbone"] = {"name": spec["backbone"].pop("type"), **spec["backbone"]}
    if spec["method"]["name"] in ("gradmem", "rmt"):
        spec["method"]["init"] = "mean_embedding"
    spec["train"].setdefault("adam_betas", list(TrainConfig().adam_betas))
    return spec


@pytest.mark.parametrize("column", COLUMNS)
def test_presets_give_the_recorded_run_specs_of_every_method(scripts, column):
    _, run_preset = scripts
    name, _ = COLUMNS[column]
    preset = _preset(name)
    records = json.loads((ROOT / "results" / "pretrained" / f"{name}.json").read_text())["records"]
    assert sorted(r["method"] for r in records) == sorted(m["key"] for m in preset["methods"])
    methods = {m["key"]: m for m in preset["methods"]}
    for record in records:
        spec = run_preset.cell_spec(preset, methods[record["method"]], preset["seeds"][0])
        assert spec == _as_run_today(record["spec"]), record["method"]
    # scored as the script scored: 200 test questions of the run's seed, batches of 8, generation on,
    # GradMem at K = 0 / 1 / 2 with its WRITE curve on 64 stories, the swap check for both memory methods
    assert (preset["test_examples"], preset["test_seed"], preset["eval"]) == (
        200,
        0,
        {"batch_size": 8, "generate": True},
    )
    assert methods["gradmem"]["eval"] == {"write_steps": [0, 1, 2], "swap_check": True, "write_curve_examples": 64}
    assert methods["rmt"]["eval"] == {"swap_check": True}
    assert "eval" not in methods["full_context"] and "eval" not in methods["no_context"]


@pytest.mark.parametrize("column", COLUMNS)
def test_the_readme_flags_build_the_presets(scripts, column):
    babi, _ = scripts
    name, flags = COLUMNS[column]
    built = babi.make_preset(babi.build_parser().parse_args([*flags, "--results", f"results/presets/{name}"]))
    assert built == _preset(name)


def test_warmup_stages_are_durations_in_order(scripts):
    babi, _ = scripts
    args = babi.build_parser().parse_args(["--single-fact-steps", "150", "--two-fact-steps", "100", "--steps", "400"])
    train = babi.make_preset(args)["base"]["train"]
    assert train["curriculum"] == [
        {"statements_per_question": 1, "questions_per_story": 1},
        {"statements_per_question": 2, "questions_per_story": 1},
        {},
    ]
    assert train["stage_steps"] == [150, 100]  # the trainer reads durations, not end steps
    args = babi.build_parser().parse_args(["--single-fact-steps", "0"])
    assert "curriculum" not in babi.make_preset(args)["base"]["train"]


def test_every_method_gets_the_same_training_settings(scripts):
    babi, run_preset = scripts
    preset = babi.make_preset(babi.build_parser().parse_args(["--adam-beta2", "0.95", "--two-fact-steps", "50"]))
    trains = [run_preset.cell_spec(preset, m, 0)["train"] for m in preset["methods"]]
    assert all(t == trains[0] for t in trains) and trains[0]["adam_betas"] == [0.9, 0.95]


def test_best_valid_step_ignores_the_warmup_stages(scripts):
    _, run_preset = scripts
    history = [
        {"kind": "eval", "stage": 0, "step": 150, "exact_match": 0.6},
        {"kind": "train", "stage": 1, "step": 160},
        {"kind": "eval", "stage": 1, "step": 200, "exact_match": 0.2},
        {"kind": "eval", "stage": 1, "step": 250, "exact_match": 0.4},
    ]
    assert run_preset.best_valid_step(history) == 250


TINY_PRESET = {
    "name": "tiny",
    "base": {
        "task": {"name": "kv", "num_pairs": 2},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "init": "mean_embedding", "write": {"steps": 1}},
        "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_examples": 8, "checkpoint_every": 2},
    },
    "methods": [
        {"key": "gm", "method": {}, "eval": {"write_steps": [0, 1], "swap_check": True, "write_curve_examples": 4}},
        {"key": "none", "label": "no context", "method": {"name": "no_context"}},
    ],
    "seeds": [0],
    "test_examples": 12,
    "test_seed": 7,
    "eval": {"batch_size": 4},
}


def test_run_preset_end_to_end(scripts, tmp_path, capsys):
    _, run_preset = scripts
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(TINY_PRESET))
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--preset", str(path), "--out", str(out), "--runs", str(runs)]
    assert run_preset.main(argv) == 0
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert sorted(cells) == ["gm_s0", "none_s0"]
    gm = cells["gm_s0"]["results"]
    assert sorted(gm) == ["gm_K0", "gm_K1", "write_curve"] and sorted(cells["none_s0"]["results"]) == ["none"]
    # the rows are evaluate's numbers for the checkpoint the cell names
    model, task, _ = load_checkpoint(runs / "gm_s0" / cells["gm_s0"]["checkpoint"])
    test = task.make_split("test", 12, 7)
    assert gm["gm_K1"] == evaluate(model, test, 4, steps=1, pad_id=task.tokenizer.pad_id, swap_check=True)
    curve = evaluate(model, test[:4], 4, pad_id=task.tokenizer.pad_id, measure_final=True)
    assert gm["write_curve"]["write_loss_after"] == curve["write_loss_final"]
    assert gm["gm_K0"]["write_loss"] == [] and cells["gm_s0"]["train_steps"] == 2
    table = (out / "table.md").read_text()
    assert "| gm_K1 (gm) | 0 |" in table and "| none (no context) | 0 |" in table
    assert f"{100 * gm['gm_K1']['exact_match']:.1f}" in table.split("| gm_K1 (gm)")[1].split("\n")[0]

    before = {p.name: p.read_text() for p in (out / "cells").glob("*.json")}
    capsys.readouterr()
    assert run_preset.main(argv) == 0  # a rerun skips every finished cell
    assert {p.name: p.read_text() for p in (out / "cells").glob("*.json")} == before
    assert capsys.readouterr().err.count("skip") == 2
