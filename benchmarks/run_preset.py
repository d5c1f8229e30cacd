"""Run an experiment preset: train every (method, seed) cell the same way, score each checkpoint on
one held-out test set, and summarise the cells into results.json and table.md.

    python benchmarks/run_preset.py --preset configs/babi_qa1_full_cpu.json --threads 1
    python benchmarks/run_preset.py --preset configs/babi_qa1_ramp_cpu.json --methods gradmem --threads 1

The preset format is benchmarks/presetkit.py's. Every finished cell is saved as
`<out>/cells/<method>_s<seed>.json` (spec, result rows, training history) and skipped on a rerun; an
interrupted cell resumes from its run folder `<runs>/<method>_s<seed>`. Methods can be run one at a
time, in separate processes, and still land in one table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from presetkit import (  # noqa: E402
    add_arguments,
    eval_options,
    load_cells,
    load_preset,
    method_spec,
    precision,
    run_cells,
    save_json,
    score,
    train_cell,
    trainable_params,
)

from gradmem.run.build import build_task  # noqa: E402


def cell_name(key: str, seed: int) -> str:
    return f"{key}_s{seed}"


def cell_spec(preset: dict[str, Any], method: dict[str, Any], seed: int) -> dict[str, Any]:
    """The run spec of one cell: the method's spec with the cell's training seed."""
    spec = method_spec(preset, method)
    spec["train"]["seed"] = seed
    return spec


def best_valid_step(history: list[dict[str, Any]]) -> int | None:
    """Step of the checkpoint scored: the best validation of the last stage (the trainer keeps no other)."""
    evals = [h for h in history if h["kind"] == "eval"]
    if not evals:
        return None
    last = max(h["stage"] for h in evals)
    return max((h for h in evals if h["stage"] == last), key=lambda h: h["exact_match"])["step"]


def run_cell(
    preset: dict[str, Any], method: dict[str, Any], seed: int, runs: Path, device: str, dtype: str, log: Any
) -> dict[str, Any]:
    """Train (or resume) one cell, score its checkpoint on the preset's test set, return its record."""
    spec = cell_spec(preset, method, seed)
    name = cell_name(method["key"], seed)
    cell = train_cell(spec, runs / name, device, dtype, lambda r: log(f"  {name} {json.dumps(r)}"))
    task = build_task(spec)
    test = task.make_split("test", preset.get("test_examples", 1000), preset.get("test_seed", 1000))
    with precision(device, dtype):
        rows = score(
            cell.model, test, method["key"], eval_options(preset, method), task.tokenizer.pad_id, task.tokenizer.eos_id
        )
    return {
        "method": method["key"],
        "label": method.get("label", method["key"]),
        "seed": seed,
        "test_examples": len(test),
        "results": rows,
        "trainable_params": trainable_params(cell.model),
        "train_steps": cell.trainer.step,
        "train_seconds": round(cell.train_seconds, 1),
        "checkpoint": cell.checkpoint.name,
        "best_valid_step": best_valid_step(cell.trainer.history),
        "resumed": cell.resumed,
        "device": device,
        "dtype": dtype,
        "train_history": cell.trainer.history,
        "spec": spec,
    }


def _cell(row: dict[str, Any], key: str, scale: float = 1.0, fmt: str = "{:.3f}") -> str:
    return fmt.format(scale * row[key]) if key in row else "-"


def summarise(preset: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Rebuild results.json and table.md from the saved cells."""
    cells = load_cells(out, [m["key"] for m in preset["methods"]])
    save_json(out / "results.json", {"preset": preset, "cells": cells})
    lines = [
        f"# {preset.get('name', out.name)}: {preset.get('about', '')}",
        "",
        "EM = teacher-forced exact match on the answer tokens, gen EM = greedy generation; READ loss = mean "
        "answer-token cross-entropy, 'another memory' = the same when each question reads the memory of the "
        "previous example in its batch (no higher than the READ loss: the memory is not used).",
        "",
        "| method | seed | trainable backbone / method params | train min | scored step | EM % | gen EM % "
        "| READ loss | another memory | valid EM % by step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        p = c["trainable_params"]
        curve = ", ".join(
            f"{h['step']}: {100 * h['exact_match']:.0f}" for h in c["train_history"] if h["kind"] == "eval"
        )
        for key, row in c["results"].items():
            if key == "write_curve":
                continue
            lines.append(
                f"| {key} ({c['label']}) | {c['seed']} | {p['backbone'] / 1e6:.1f}M / {p['method'] / 1e6:.2f}M "
                f"| {c['train_seconds'] / 60:.1f} | {c['best_valid_step']} | {_cell(row, 'exact_match', 100, '{:.1f}')} "
                f"| {_cell(row, 'generated_exact_match', 100, '{:.1f}')} | {_cell(row, 'loss')} "
                f"| {_cell(row, 'loss_swapped')} | {curve} |"
            )
    for c in cells:
        if "write_curve" in c["results"]:
            w = c["results"]["write_curve"]
            lines.append(
                f"\n{c['label']} (seed {c['seed']}): reconstruction loss of {w['examples']:.0f} held-out contexts "
                f"before / after the WRITE: {w['write_loss_before']:.3f} / {w['write_loss_after']:.3f} nats per token."
            )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    return cells


def run(
    preset: dict[str, Any],
    wanted: list[str],
    out: Path,
    runs: Path,
    device: str = "cpu",
    dtype: str = "fp32",
    summary_only: bool = False,
) -> None:
    """Run the preset's cells for the method keys `wanted` (finished ones are skipped), then summarise."""

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not summary_only:
        cells = [
            (cell_name(m["key"], seed), lambda m=m, s=seed: run_cell(preset, m, s, runs, device, dtype, log))
            for m in preset["methods"]
            if m["key"] in wanted
            for seed in preset["seeds"]
        ]
        run_cells(out, cells, lambda r: f"trained in {r['train_seconds']:.0f} s", lambda: summarise(preset, out), log)
    summarise(preset, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    preset, wanted, out, runs = load_preset(args, "presets")
    run(preset, wanted, out, runs, args.device, args.dtype, args.summary_only)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
