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
from its run folder. The JSON summary, Markdown table and PNG plots are rebuilt from the cells.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, percent, plot_curves, plot_lines  # noqa: E402

from gradmem.build import build_model, build_task  # noqa: E402
from gradmem.checkpoint_weights import load_weights  # noqa: E402
from gradmem.evaluate import evaluate  # noqa: E402
from gradmem.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for nested dicts (inputs are not modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stages(ramp: list[int], pairs: int, start_after: int = 0) -> list[dict[str, int]]:
    """Curriculum stages for a cell of `pairs`: ramp values in (start_after, pairs), then `pairs`."""
    return [{"num_pairs": p} for p in ramp if start_after < p < pairs] + [{"num_pairs": pairs}]


def cell_name(method: str, pairs: int, seed: int) -> str:
    return f"{method}_N{pairs}_s{seed}"


def cell_spec(
    preset: dict[str, Any], method: dict[str, Any], pairs: int, seed: int, start_after: int
) -> dict[str, Any]:
    """The run spec of one cell: base, then the method's overrides, then pairs / seed / curriculum."""
    spec = deep_merge(preset["base"], {"train": method.get("train", {})})
    base_method, own = preset["base"].get("method", {}), method["method"]
    # the same method as the base refines the base's settings; another method starts from its own
    same = own.get("name", base_method.get("name")) == base_method.get("name")
    spec["method"] = deep_merge(base_method, own) if same else copy.deepcopy(own)
    if "backbone" in method:  # e.g. Mamba: another architecture in place of the base one
        spec["backbone"] = copy.deepcopy(method["backbone"])
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


def checkpoint_of(run_dir: Path) -> Path:
    """The best checkpoint of a run folder if it reached its last stage, else its last one."""
    return run_dir / "best" if (run_dir / "best" / "model.safetensors").exists() else run_dir / "last"


def precision(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (weights and optimiser stay fp32) or nothing for fp32."""
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


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
    run_dir = runs / cell_name(method["key"], pairs, seed)
    torch.manual_seed(seed)
    model = build_model(spec).to(device)
    trainer = Trainer.from_spec(
        model,
        spec,
        run_dir,
        on_log=lambda r: (
            r["kind"] == "eval"
            and log(
                f"  {cell_name(method['key'], pairs, seed)} step {r['step']} stage {r['stage']} EM {r['exact_match']:.3f}"
            )
        ),
    )
    resumed = trainer.resume()
    if not resumed and source is not None:
        if not (checkpoint_of(source) / "model.safetensors").exists():
            raise RuntimeError(f"{run_dir.name} starts from {source.name}, which has not been trained; list it first")
        load_weights(model, checkpoint_of(source), device)
    started = time.time()
    with precision(device, dtype):
        trainer.train()
    train_s = time.time() - started
    final = checkpoint_of(run_dir)
    load_weights(model, final, device)
    task = build_task(spec)
    started = time.time()
    with precision(device, dtype):
        result = evaluate(model, test_sets[pairs], preset.get("eval_batch_size", 250), pad_id=task.tokenizer.pad_id)
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
        "checkpoint": final.name,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(time.time() - started, 1),
        "init_from": None if source is None else source.name,
        "resumed": resumed,
        "device": device,
        "dtype": dtype,
        "eval_history": [(r["step"], r["stage"], r["exact_match"]) for r in trainer.history if r["kind"] == "eval"],
        "spec": spec,
    }


def summarise(preset: dict[str, Any], out: Path) -> dict[str, Any]:
    """Rebuild results.json, table.md, capacity.png and curves.png from the saved cells."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    order = [m["key"] for m in preset["methods"]]
    cells.sort(key=lambda c: (order.index(c["method"]) if c["method"] in order else len(order), c["pairs"], c["seed"]))
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
    parser.add_argument("--preset", required=True, help="benchmark preset JSON (see configs/capacity_*.json)")
    parser.add_argument("--out", default=None, help="results folder (default results/capacity/<preset name>)")
    parser.add_argument("--runs", default=None, help="checkpoint folder (default runs/capacity/<preset name>)")
    parser.add_argument("--methods", default=None, help="comma-separated method keys (default: all in the preset)")
    parser.add_argument("--pairs", default=None, help="comma-separated numbers of pairs (default: the preset's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--set", nargs="*", default=[], help="base spec overrides, e.g. train.steps=500")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:1 ...")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16 = autocast, fp32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--summary-only", action="store_true", help="rebuild table and plots from saved cells")
    args = parser.parse_args(argv)

    from gradmem.build import apply_overrides

    preset = json.loads(Path(args.preset).read_text())
    preset["base"] = apply_overrides(preset["base"], args.set)
    if args.pairs:
        preset["pairs"] = [int(x) for x in args.pairs.split(",")]
    if args.seeds:
        preset["seeds"] = [int(x) for x in args.seeds.split(",")]
    wanted = args.methods.split(",") if args.methods else [m["key"] for m in preset["methods"]]
    unknown = set(wanted) - {m["key"] for m in preset["methods"]}
    if unknown:
        raise SystemExit(f"unknown method keys {sorted(unknown)}; preset has {[m['key'] for m in preset['methods']]}")
    name = preset.get("name", Path(args.preset).stem)
    out = Path(args.out) if args.out else ROOT / "results" / "capacity" / name
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "capacity" / name
    (out / "cells").mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not args.summary_only:
        test_sets = {}
        for n in preset["pairs"]:
            task = build_task({"task": {**preset["base"]["task"], "num_pairs": n}})
            test_sets[n] = task.make_split("test", preset.get("test_examples", 1000), preset.get("test_seed", 1000))
        for method in (m for m in preset["methods"] if m["key"] in wanted):
            for n in sorted(preset["pairs"]):
                for seed in preset["seeds"]:
                    path = out / "cells" / f"{cell_name(method['key'], n, seed)}.json"
                    if path.exists():
                        log(f"skip {path.name} (done)")
                        continue
                    log(f"cell {path.stem}")
                    record = run_cell(preset, method, n, seed, out, runs, test_sets, args.device, args.dtype, log)
                    path.write_text(json.dumps(record, indent=2))
                    log(f"done {path.stem}: EM {record['exact_match']:.3f} in {record['train_seconds']:.0f} s")
                    summarise(preset, out)
    summarise(preset, out)
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
