"""Capacity benchmark (paper Table 1): train each method at each number of key-value pairs and
score exact match on one fixed held-out test set per number of pairs.

    python benchmarks/capacity.py --preset configs/capacity_cpu.json
    python benchmarks/capacity.py --preset configs/capacity_paper.json --device cuda --dtype bf16
    python benchmarks/capacity.py --preset configs/capacity_cpu.json --methods rmt_x1 --pairs 4 --seeds 0,1

A preset is JSON: `base` (a run spec: task, backbone, method, train), `methods` (a list of
{key, label, method, backbone?, train?, init_from?, ramp?, chain_pairs?}), `pairs`, `seeds`, `test_examples`,
`test_seed`, and optionally `ramp` (curriculum stages in pairs) and `chain_pairs` (start each N
from the same method's checkpoint at the previous N); a method's own `ramp` / `chain_pairs` win. Every finished (method, N, seed) cell is saved as
`<out>/cells/<method>_N<n>_s<seed>.json` and skipped on a rerun; an interrupted cell resumes
from its run folder. The JSON summary, Markdown table and PNG plots are rebuilt from the cells. What every preset runner
shares (cell spec, training / resuming, scoring, saving, command line) is in benchmarks/presetkit.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from presetkit import (  # noqa: E402
    EVAL_DEFAULTS,
    add_arguments,
    deep_merge,
    load_cells,
    load_preset,
    method_spec,
    precision,
    run_cells,
    score,
    train_cell,
)
from report import markdown_table, percent, plot_curves, plot_lines  # noqa: E402

from gradmem.cli.options import int_list  # noqa: E402
from gradmem.run.build import build_task  # noqa: E402

__all__ = ["cell_spec", "deep_merge", "main", "run_cell", "summarise"]


def stages(ramp: list[int], pairs: int, start_after: int = 0) -> list[dict[str, int]]:
    """Curriculum stages for a cell of `pairs`: ramp values in (start_after, pairs), then `pairs`."""
    return [{"num_pairs": p} for p in ramp if start_after < p < pairs] + [{"num_pairs": pairs}]


def cell_name(method: str, pairs: int, seed: int) -> str:
    return f"{method}_N{pairs}_s{seed}"


def cell_spec(
    preset: dict[str, Any], method: dict[str, Any], pairs: int, seed: int, start_after: int
) -> dict[str, Any]:
    """The run spec of one cell: base, then the method's overrides, then pairs / seed / curriculum."""
    spec = method_spec(preset, method)
    spec["task"]["num_pairs"] = pairs
    spec["train"]["seed"] = seed
    ramp = method.get("ramp", preset.get("ramp"))
    if ramp:
        spec["train"]["curriculum"] = stages(ramp, pairs, start_after)
    return spec


def init_source(
    preset: dict[str, Any], method: dict[str, Any], pairs: int, seed: int, runs: Path
) -> tuple[Path | None, int]:
    """Checkpoint a cell starts from, and the pairs it was trained on (0 = from scratch).

    `init_from` (e.g. K=2 from K=1, "then raise K") starts from another method's cell at the same N;
    otherwise `chain_pairs` starts from this method's cell at the previous N ("grow N").
    """
    if method.get("init_from"):
        return runs / cell_name(method["init_from"], pairs, seed), pairs
    grid = sorted(preset["pairs"])
    if method.get("chain_pairs", preset.get("chain_pairs")) and grid.index(pairs) > 0:
        previous = grid[grid.index(pairs) - 1]
        return runs / cell_name(method["key"], previous, seed), previous
    return None, 0


def state_floats(model: Any, examples: list) -> int:
    """Floats a method keeps per example (paper Table 6) for the longest context of `examples`
    (full context: its KV cache, or a state-space backbone's fixed recurrent state)."""
    return int(model.method.state_floats(model.backbone, max(len(e.context) for e in examples)))


def run_cell(
    preset: dict[str, Any],
    method: dict[str, Any],
    pairs: int,
    seed: int,
    out: Path,
    runs: Path,
    test_sets: dict[int, list],
    device: str,
    dtype: str,
    log: Any,
) -> dict[str, Any]:
    """Train (or resume) one cell, score its checkpoint on the test set, return the cell record."""
    source, start_after = init_source(preset, method, pairs, seed, runs)
    spec = cell_spec(preset, method, pairs, seed, start_after)
    name = cell_name(method["key"], pairs, seed)

    def on_log(r: dict[str, Any]) -> Any:
        return r["kind"] == "eval" and log(f"  {name} step {r['step']} stage {r['stage']} EM {r['exact_match']:.3f}")

    cell = train_cell(spec, runs / name, device, dtype, on_log, source)
    model, trainer = cell.model, cell.trainer
    task = build_task(spec)
    started = time.time()
    options = {**EVAL_DEFAULTS, "batch_size": preset.get("eval_batch_size", 250)}
    with precision(device, dtype):
        result = score(model, test_sets[pairs], "test", options, task.tokenizer.pad_id, None)["test"]
    last_stage = len(trainer.stages) - 1
    return {
        "method": method["key"],
        "label": method.get("label", method["key"]),
        "pairs": pairs,
        "seed": seed,
        "exact_match": result["exact_match"],
        "token_accuracy": result["token_accuracy"],
        "test_loss": result["loss"],
        "test_examples": len(test_sets[pairs]),
        "state_floats": state_floats(model, test_sets[pairs]),
        "train_steps": trainer.step,
        "reached_last_stage": trainer.stage == last_stage,
        "checkpoint": cell.checkpoint.name,
        "train_seconds": round(cell.train_seconds, 1),
        "eval_seconds": round(time.time() - started, 1),
        "init_from": None if source is None else source.name,
        "resumed": cell.resumed,
        "device": device,
        "dtype": dtype,
        "eval_history": [(r["step"], r["stage"], r["exact_match"]) for r in trainer.history if r["kind"] == "eval"],
        "spec": spec,
    }


def summarise(preset: dict[str, Any], out: Path) -> dict[str, Any]:
    """Rebuild results.json, table.md, capacity.png and curves.png from the saved cells."""
    cells = load_cells(out, [m["key"] for m in preset["methods"]])
    labels = {m["key"]: m.get("label", m["key"]) for m in preset["methods"]}
    grid = sorted({c["pairs"] for c in cells})
    series: dict[str, dict[int, list[float]]] = {}
    for c in cells:
        series.setdefault(labels.get(c["method"], c["method"]), {}).setdefault(c["pairs"], []).append(c["exact_match"])
    rows = []
    for key in dict.fromkeys(c["method"] for c in cells):
        mine = [c for c in cells if c["method"] == key]
        floats = sorted({c["state_floats"] for c in mine})
        row = [labels.get(key, key), floats[0] if len(floats) == 1 else f"{floats[0]}..{floats[-1]}"]
        for n in grid:
            ems = [c["exact_match"] for c in mine if c["pairs"] == n]
            flag = "" if all(c["reached_last_stage"] for c in mine if c["pairs"] == n) else "*"
            row.append(percent(ems) + flag if ems else "-")
        row += [
            ",".join(str(seed) for seed in sorted({c["seed"] for c in mine})),
            sum(c["train_steps"] for c in mine),
            round(sum(c["train_seconds"] for c in mine) / 60, 1),
        ]
        rows.append(row)
    header = ["method", "state floats"] + [f"N={n}" for n in grid] + ["seeds", "train steps", "train min"]
    name = preset.get("name", out.name)
    test_n = cells[0]["test_examples"] if cells else 0
    table = (
        f"Key-value retrieval, exact match % on {test_n} held-out examples per N ({name}).\n"
        "Mean ± standard deviation over the seeds listed. `*` = in at least one seed the curriculum did not reach N\n"
        "within the step budget (the last checkpoint is scored).\n\n" + markdown_table(header, rows)
    )
    (out / "table.md").write_text(table)
    summary = {"preset": preset, "cells": [{k: v for k, v in c.items() if k != "spec"} for c in cells]}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    seeds_of = {key: {c["seed"] for c in cells if c["method"] == key} for key in {c["method"] for c in cells}}
    if cells:
        plot_lines(out / "capacity.png", series, f"capacity: {name}")
        panels: dict[str, dict[str, list[tuple[int, float]]]] = {}
        for c in cells:  # one panel per N; a curriculum stage change shows as a drop (a harder stage)
            label = labels.get(c["method"], c["method"]) + (f" s{c['seed']}" if len(seeds_of[c["method"]]) > 1 else "")
            panels.setdefault(f"N={c['pairs']}", {})[label] = [(s, em) for s, _, em in c["eval_history"]]
        plot_curves(
            out / "curves.png",
            dict(sorted(panels.items(), key=lambda kv: int(kv[0][2:]))),
            f"held-out EM during training: {name}",
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument(
        "--pairs", type=int_list, default=None, help="comma-separated numbers of pairs (default: the preset's)"
    )
    args = parser.parse_args(argv)
    preset, wanted, out, runs = load_preset(args, "capacity")
    if args.pairs:
        preset["pairs"] = args.pairs

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not args.summary_only:
        test_sets = {}
        for n in preset["pairs"]:
            task = build_task({"task": {**preset["base"]["task"], "num_pairs": n}})
            test_sets[n] = task.make_split("test", preset.get("test_examples", 1000), preset.get("test_seed", 1000))
        cells = [
            (
                cell_name(method["key"], n, seed),
                lambda m=method, n=n, s=seed: run_cell(
                    preset, m, n, s, out, runs, test_sets, args.device, args.dtype, log
                ),
            )
            for method in preset["methods"]
            if method["key"] in wanted
            for n in sorted(preset["pairs"])
            for seed in preset["seeds"]
        ]
        run_cells(
            out,
            cells,
            lambda r: f"EM {r['exact_match']:.3f} in {r['train_seconds']:.0f} s",
            lambda: summarise(preset, out),
            log,
        )
    summarise(preset, out)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
