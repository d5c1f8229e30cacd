"""What every experiment preset runner shares: the spec of a cell, training (or resuming) it, scoring
it on a held-out test set, saving its record and skipping it on a rerun, and the command line.

A preset is JSON: `name`, `base` (a run spec: task, backbone, method, train), `methods` (a list of
{key, label?, method, backbone?, train?, eval?}), `seeds`, `test_examples`, `test_seed` and `eval`
(how the test set is scored, see EVAL_DEFAULTS; a method's `eval` refines it). Runners add their own
axes on top: benchmarks/run_preset.py runs (method, seed) cells, benchmarks/capacity.py
(method, number of pairs, seed) cells with curricula and chaining.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradmem.cli.options import int_list
from gradmem.core.batch import Example
from gradmem.core.device import device_option
from gradmem.core.files import atomic_write_text
from gradmem.evaluation.evaluate import evaluate
from gradmem.methods.model import MemoryModel
from gradmem.run.overrides import apply_overrides
from gradmem.run.spec import upgrade_spec
from gradmem.run.weights import load_weights
from gradmem.training.start import start_run
from gradmem.training.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
DTYPES = {"fp32": None, "bf16": torch.bfloat16}
# How a cell's checkpoint is scored on the test set (gradmem.evaluation.evaluate.evaluate's options):
EVAL_DEFAULTS: dict[str, Any] = {
    "batch_size": 250,  # examples per evaluation batch
    "generate": False,  # also greedy-decode the answers (generated_exact_match)
    "write_steps": None,  # test-time K values, one result row `<key>_K<k>` each; None: one row at the trained K
    "swap_check": False,  # add loss_swapped: the READ loss with another example's memory
    "write_curve_examples": 0,  # on this many test examples, reconstruction loss before / after the WRITE
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, recursively for nested dicts (inputs are not modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def method_spec(preset: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """The run spec of one method: the base, then the method's train / method / backbone overrides."""
    spec = deep_merge(preset["base"], {"train": method.get("train", {})})
    base_method, own = preset["base"].get("method", {}), method["method"]
    # the same method as the base refines the base's settings; another method starts from its own
    same = own.get("name", base_method.get("name")) == base_method.get("name")
    spec["method"] = deep_merge(base_method, own) if same else copy.deepcopy(own)
    if "backbone" in method:  # e.g. Mamba: another architecture in place of the base one
        spec["backbone"] = copy.deepcopy(method["backbone"])
    return spec


def eval_options(preset: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """EVAL_DEFAULTS, refined by the preset's `eval`, then the method's; unknown keys are refused."""
    options = {**EVAL_DEFAULTS, **preset.get("eval", {}), **method.get("eval", {})}
    unknown = sorted(set(options) - set(EVAL_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown eval options {unknown}; valid: {sorted(EVAL_DEFAULTS)}")
    return options


def checkpoint_of(run_dir: Path) -> Path:
    """The best checkpoint of a run folder if it reached its last stage, else its last one."""
    return run_dir / "best" if (run_dir / "best" / "model.safetensors").exists() else run_dir / "last"


def precision(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (weights and optimiser stay fp32) or nothing for fp32."""
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


@dataclass
class TrainedCell:
    """A cell's model (holding the weights of `checkpoint`) and how its training went."""

    model: MemoryModel
    trainer: Trainer
    checkpoint: Path  # the folder scored: best, or last when the last stage was never reached
    resumed: bool  # continued from an interrupted run's last/
    train_seconds: float  # wall time of this process's training (validation included)


def train_cell(
    spec: dict[str, Any],
    run_dir: Path,
    device: str = "cpu",
    dtype: str = "fp32",
    on_log: Callable[[dict[str, Any]], Any] | None = None,
    source: Path | None = None,
) -> TrainedCell:
    """Train one cell's spec in `run_dir` (resuming it when interrupted), from `source`'s weights
    when given and not resuming, and load the checkpoint to score."""
    run = start_run(spec, run_dir, resume=True, device=device, on_log=on_log)  # an interrupted cell continues
    trainer, resumed, model = run.trainer, run.resumed, run.trainer.model
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
    return TrainedCell(model, trainer, final, resumed, train_s)


def score(
    model: MemoryModel, examples: list[Example], key: str, options: dict[str, Any], pad_id: int, eos_id: int | None
) -> dict[str, dict[str, Any]]:
    """Result rows of a checkpoint on the test set: `key`, or `<key>_K<k>` per test-time K, plus the
    `write_curve` entry when asked for (methods that write by gradient steps only)."""
    size = options["batch_size"]
    rows: dict[str, dict[str, Any]] = {}
    for k in options["write_steps"] or [None]:
        rows[key if k is None else f"{key}_K{k}"] = evaluate(
            model,
            examples,
            size,
            steps=k,
            generate=options["generate"],
            eos_id=eos_id,
            pad_id=pad_id,
            swap_check=options["swap_check"],
        )
    if options["write_curve_examples"]:
        curve = evaluate(model, examples[: options["write_curve_examples"]], size, pad_id=pad_id, measure_final=True)
        if "write_loss_final" in curve:
            rows["write_curve"] = {
                "examples": curve["examples"],
                "write_loss_before": curve["write_loss"][0],
                "write_loss_after": curve["write_loss_final"],
            }
    return rows


def trainable_params(model: MemoryModel) -> dict[str, int]:
    """Trained parameters of the backbone and of the method."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return {
        "backbone": sum(p.numel() for n, p in params if n.startswith("backbone.")),
        "method": sum(p.numel() for n, p in params if n.startswith("method.")),
    }


def save_json(path: Path, data: Any) -> None:
    """Write JSON as one atomic replace: an interrupted save never leaves half a record."""
    atomic_write_text(path, json.dumps(data, indent=2))


def run_cells(
    out: Path,
    cells: Iterable[tuple[str, Callable[[], dict[str, Any]]]],
    done: Callable[[dict[str, Any]], str],
    summarise: Callable[[], Any],
    log: Callable[[str], None],
) -> None:
    """Run each (name, make record) cell whose `<out>/cells/<name>.json` does not exist yet, save its
    record and rebuild the summary after each (a later cell may take hours)."""
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for name, run in cells:
        path = out / "cells" / f"{name}.json"
        if path.exists():
            log(f"skip {path.name} (done)")
            continue
        log(f"cell {name}")
        record = run()
        save_json(path, record)
        log(f"done {name}: {done(record)}")
        summarise()


def load_cells(out: Path, order: list[str]) -> list[dict[str, Any]]:
    """Saved cell records, in the preset's method order (unknown methods last)."""
    cells = [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]
    key = lambda c: (order.index(c["method"]) if c["method"] in order else len(order), c.get("pairs", 0), c["seed"])  # noqa: E731
    return sorted(cells, key=key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every preset runner takes."""
    parser.add_argument("--preset", required=True, help="preset JSON (see configs/)")
    parser.add_argument("--out", default=None, help="results folder (default results/<runner>/<preset name>)")
    parser.add_argument("--runs", default=None, help="checkpoint folder (default runs/<runner>/<preset name>)")
    parser.add_argument("--methods", default=None, help="comma-separated method keys (default: all in the preset)")
    parser.add_argument("--seeds", type=int_list, default=None, help="comma-separated seeds (default: the preset's)")
    parser.add_argument("--set", nargs="*", default=[], help="base spec overrides, e.g. train.steps=500")
    parser.add_argument(
        "--device", type=device_option, default="auto", help="auto (CUDA when available) | cpu | cuda | cuda:1 ..."
    )
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16 = autocast, fp32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--summary-only", action="store_true", help="rebuild the summary from saved cells")


def load_preset(args: argparse.Namespace, runner: str) -> tuple[dict[str, Any], list[str], Path, Path]:
    """(preset with the command line's overrides, method keys to run, results folder, runs folder)."""
    preset = json.loads(Path(args.preset).read_text())
    preset["base"] = apply_overrides(upgrade_spec(preset["base"], args.preset), args.set)
    if args.seeds:
        preset["seeds"] = args.seeds
    keys = [m["key"] for m in preset["methods"]]
    wanted = args.methods.split(",") if args.methods else keys
    unknown = set(wanted) - set(keys)
    if unknown:
        raise SystemExit(f"unknown method keys {sorted(unknown)}; preset has {keys}")
    name = preset.get("name", Path(args.preset).stem)
    out = Path(args.out) if args.out else ROOT / "results" / runner / name
    runs = Path(args.runs) if args.runs else ROOT / "runs" / runner / name
    (out / "cells").mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    return preset, wanted, out, runs
