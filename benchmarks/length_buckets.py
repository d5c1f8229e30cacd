"""Length buckets vs batches drawn alone: training throughput on tasks whose contexts vary in length.

    python benchmarks/length_buckets.py --tasks 1,2,3 --buckets 16 --rounds 3

For each bAbI task (the last curriculum stage of --config with `task.task` set) two trainers hold
the same weights: one draws each batch on its own (`train.length_buckets=1`), the other with
`train.length_buckets=B`. Every round times each on one whole block of B steps (B batches: the same
number of examples, drawn from the same distribution), in a rotated order, after one warm-up block each; a step is WRITE with its K
steps, READ, backward and AdamW. Reported per task: examples per second, the per-round speed-up
(median and range) and the padded context tokens per real one. Writes
results/perf/length_buckets[_tag].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfkit import interleaved, ratios, summary  # noqa: E402
from precision import load_spec  # noqa: E402
from report import markdown_table, save_results  # noqa: E402

from gradmem.cli.main import positive_int  # noqa: E402
from gradmem.core.device import cpu_model_name  # noqa: E402
from gradmem.run.build import build_model  # noqa: E402
from gradmem.run.train_config import TrainConfig, curriculum  # noqa: E402
from gradmem.training.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def last_stage_spec(spec: dict[str, Any], task: int, buckets: int) -> dict[str, Any]:
    """The spec trained on its last curriculum stage of bAbI task `task` alone, with these buckets."""
    spec = copy.deepcopy(spec)
    spec["task"] = {**curriculum(spec["task"], TrainConfig(**spec.get("train", {})))[-1].task, "task": task}
    spec["train"] = {**spec.get("train", {}), "curriculum": [], "length_buckets": buckets}
    return spec


def block_of_steps(trainer: Trainer, buckets: int, padding: list[float]) -> Any:
    """A call that trains the next whole block of `buckets` steps and notes its padding ratio."""
    optimizer = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-4)
    state = {"step": 0}

    def run() -> None:
        padded = real = 0
        for step in range(state["step"], state["step"] + buckets):
            batch = trainer.train_batch(step)
            padded += batch.context.ids.numel()
            real += int(batch.context.lengths.sum())
            optimizer.zero_grad(set_to_none=True)
            trainer.model(batch).loss.backward()
            optimizer.step()
        state["step"] += buckets
        padding.append(padded / real)

    return run


def measure(spec: dict[str, Any], task: int, buckets: int, rounds: int, scratch: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(last_stage_spec(spec, task, 1)).train()
    padding: dict[str, list[float]] = {"alone": [], "bucketed": []}
    calls = {}
    for name, count in (("alone", 1), ("bucketed", buckets)):
        variant = last_stage_spec(spec, task, count)
        trainer = Trainer.from_spec(copy.deepcopy(model), variant, scratch / name, device="cpu")
        calls[name] = block_of_steps(trainer, buckets, padding[name])
    interleaved(calls, 1, torch.device("cpu"))  # warm-up: allocator and kernel caches, one block each
    for values in padding.values():
        values.clear()
    times = interleaved(calls, rounds, torch.device("cpu"))
    examples = buckets * TrainConfig(**spec.get("train", {})).batch_size
    return {
        "task": task,
        "examples_per_block": examples,
        "examples_per_s": {name: examples / summary(values)["median"] for name, values in times.items()},
        "seconds_per_block": {name: summary(values) for name, values in times.items()},
        "speed_up": ratios(times, "alone", "bucketed"),
        "padded_per_real_context_token": {name: sum(v) / len(v) for name, v in padding.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "babi_qa1_cpu.json"), help="bAbI run spec")
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides, e.g. train.batch_size=16")
    parser.add_argument("--tasks", default="2,3", help="comma-separated bAbI task numbers")
    parser.add_argument("--buckets", type=positive_int, default=16, help="train.length_buckets of the bucketed trainer")
    parser.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds (one block each)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--tag", default="", help="results name suffix")
    parser.add_argument("--out", default=str(ROOT / "results" / "perf"), help="results folder")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.config, args.set)
        tasks = [int(t) for t in args.tasks.split(",")]
    except (OSError, ValueError) as err:
        parser.error(f"cannot read --config {args.config} / --tasks {args.tasks}: {err}")
    if spec.get("task", {}).get("name") != "babi":
        parser.error(f"--config {args.config} is not a bAbI run spec")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        cells = [measure(spec, t, args.buckets, args.rounds, Path(scratch) / str(t)) for t in tasks]
    rows = [
        [
            f"QA{c['task']}",
            f"{c['examples_per_s']['alone']:.1f}",
            f"{c['examples_per_s']['bucketed']:.1f}",
            f"{c['speed_up']['median']:.2f}x ({c['speed_up']['min']:.2f}-{c['speed_up']['max']:.2f})",
            f"{c['padded_per_real_context_token']['alone']:.2f}",
            f"{c['padded_per_real_context_token']['bucketed']:.2f}",
        ]
        for c in cells
    ]
    command = "python benchmarks/length_buckets.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        f"# Training throughput: length buckets ({args.buckets}) vs batches drawn alone\n\n"
        f"{cpu_model_name()}, {args.threads} thread(s), torch {torch.__version__}; {Path(args.config).name}, last "
        f"stage; {args.rounds} interleaved rounds of one {args.buckets}-step block each.\n\n"
        + markdown_table(
            [
                "task",
                "ex/s alone",
                "ex/s bucketed",
                "speed-up (median, range)",
                "padded/real alone",
                "padded/real bucketed",
            ],
            rows,
        )
        + f"\nCommand: `{command}`\n"
    )
    result = {
        "config": args.config,
        "overrides": args.set,
        "buckets": args.buckets,
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu": cpu_model_name(),
        "torch": torch.__version__,
        "cells": cells,
    }
    save_results(Path(args.out), "length_buckets" + (f"_{args.tag}" if args.tag else ""), result, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
