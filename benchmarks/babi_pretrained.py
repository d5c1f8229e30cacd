"""Generated bAbI-style QA with a pretrained LM, every method with the same budget: the flags of the
earlier script, turned into a preset and run by benchmarks/run_preset.py.

    python benchmarks/babi_pretrained.py --methods gradmem,rmt,full_context,no_context --out runs/babi_qa1
    python benchmarks/babi_pretrained.py --two-fact-steps 300 --steps 750 --adam-beta2 0.95 --write-preset x.json

Every method trains the SAME backbone parameters (the top `--train-top-layers` decoder layers and
the final norm; the rest frozen) for the same steps and batch size, at the same learning rate, and
is scored on the same held-out questions. On top of that GradMem trains its M0, memory projection
and WRITE head, and RMT its M0 and projection (both M0 start from the mean token embedding:
`method.init`). full_context reads [story; question], no_context reads the question alone. The
README's columns are configs/babi_qa1_full_cpu.json (the defaults) and configs/babi_qa1_ramp_cpu.json
(`--two-fact-steps 300 --steps 750 --adam-beta2 0.95`); `--write-preset FILE` writes the preset of
any flags instead of running it. Data is GENERATED bAbI-style, not the bAbI benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_preset  # noqa: E402

METHODS = ("gradmem", "rmt", "full_context", "no_context")


def make_preset(args: argparse.Namespace) -> dict[str, Any]:
    """The preset these flags describe: one base spec, every method on it, one seed, 200 test questions."""
    tokenizer = {"type": "hf", "pretrained": args.model}
    task = {
        "name": "babi",
        "task": args.task,
        "questions_per_story": args.questions_per_story,
        "statements_per_question": args.statements_per_question,
        "tokenizer": tokenizer,
    }
    backbone = {"name": "hf", "pretrained": args.model, "freeze": True, "train_top_layers": args.train_top_layers}
    optim = {"name": args.inner_optim, "lr": args.inner_lr, "clip_norm": args.inner_clip_norm}
    gradmem = {
        "name": "gradmem",
        "num_memory": args.memory,
        "inner_loss_weight": args.inner_loss_weight,
        "init": "mean_embedding",
        "write": {"steps": args.write_steps, "optim": optim},
    }
    return {
        "name": Path(args.results).name,
        "about": f"generated bAbI-style QA{args.task} (not the bAbI benchmark), {args.model}, the same budget for "
        "every method",
        "base": {"task": task, "backbone": backbone, "method": gradmem, "train": train_settings(args)},
        "methods": method_entries(args),
        "seeds": [args.seed],
        "test_examples": args.test_examples,
        "test_seed": args.seed,
        "eval": {"batch_size": 8, "generate": True},
    }


def train_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The base spec's train section: the same for every method, with the warm-up stages if any."""
    train = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "adam_betas": [0.9, args.adam_beta2],
        "warmup_steps": 20,
        "eval_every": args.eval_every,
        "eval_examples": args.eval_examples,
        "eval_batch_size": 8,
        "checkpoint_every": args.steps,
        "log_every": 10,
        "seed": args.seed,
    }
    # Warm-up stages, each for a fixed number of steps (the same for every method, whatever its EM), then
    # the task itself for the rest of `steps`: one-statement stories, then (optionally) two-statement ones,
    # all with one question per story.
    warmups = [
        ({"statements_per_question": n, "questions_per_story": 1}, steps)
        for n, steps in ((1, args.single_fact_steps), (2, args.two_fact_steps))
        if steps
    ]
    if warmups:
        train |= {"curriculum": [stage for stage, _ in warmups] + [{}], "stage_steps": [steps for _, steps in warmups]}
    return train


def method_entries(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The preset's methods: GradMem (the base spec's method), RMT and the two bounds."""
    k = args.write_steps
    rmt = {"name": "rmt", "num_memory": args.memory, "steps": 1, "init": "mean_embedding"}
    return [
        {
            "key": "gradmem",
            "label": f"GradMem m = {args.memory}, K = {k}",
            "method": {},
            "eval": {"write_steps": sorted({0, k, 2 * k}), "swap_check": True, "write_curve_examples": 64},
        },
        {"key": "rmt", "label": f"RMT x1, m = {args.memory}", "method": rmt, "eval": {"swap_check": True}},
        {"key": "full_context", "label": "full context (upper bound)", "method": {"name": "full_context"}},
        {"key": "no_context", "label": "no context (lower bound)", "method": {"name": "no_context"}},
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    add("--model", default="smollm2-135m")
    add("--task", type=int, default=1)
    add("--questions-per-story", type=int, default=2)
    add("--statements-per-question", type=int, default=None)
    add("--train-top-layers", type=int, default=30, help="decoder layers trained (top k; 30 = all of SmolLM2)")
    add("--single-fact-steps", type=int, default=150, help="warm-up steps on one-fact stories (0 = none)")
    add("--two-fact-steps", type=int, default=0, help="then warm-up steps on two-statement stories (0 = none)")
    add("--memory", type=int, default=8)
    add("--write-steps", type=int, default=1)
    add("--inner-optim", default="sgd", choices=("sgd", "adam"))
    add("--inner-lr", type=float, default=1.0)
    add("--inner-clip-norm", type=float, default=1.0)
    add("--inner-loss-weight", type=float, default=0.0)
    add("--steps", type=int, default=500)
    add("--batch-size", type=int, default=4)
    add("--lr", type=float, default=1e-4)
    add("--adam-beta2", type=float, default=0.999, help="AdamW beta2 of every method (0.95 damps gradient spikes)")
    add("--eval-every", type=int, default=50)
    add("--eval-examples", type=int, default=64)
    add("--test-examples", type=int, default=200)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    add("--out", default="runs/babi_qa1_full", help="run folders, one per method")
    add("--results", default="results/presets/babi_qa1_full_cpu", help="results folder (cells, results.json, table.md)")
    add("--variant", default="", help="suffix of the method keys, to keep several runs of one method")
    add("--write-preset", default=None, help="write the preset JSON to this file and stop")
    add("--report-only", action="store_true", help="only rebuild the results files")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    names = [n for n in args.methods.split(",") if n]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {list(METHODS)}")
    preset = make_preset(args)
    if args.write_preset:
        Path(args.write_preset).write_text(json.dumps(preset, indent=2) + "\n")
        return
    if args.variant:
        for method in preset["methods"]:
            method["key"] += f"_{args.variant}"
        names = [f"{n}_{args.variant}" for n in names]
    torch.set_num_threads(args.threads)
    run_preset.run(preset, names, Path(args.results), Path(args.out), summary_only=args.report_only)


if __name__ == "__main__":
    main()
