"""Meta-train memory methods on generated bAbI-style QA with a pretrained LM, all with the same budget.

    python benchmarks/babi_pretrained.py --methods gradmem,rmt,full_context,no_context --out runs/babi_qa1

Every method trains the SAME backbone parameters (the top `--train-top-layers` decoder layers and
the final norm; the rest frozen) for the same steps and batch size, at the same learning rate, and
is scored on the same held-out questions. On top of that GradMem trains its M0, memory projection
and WRITE head, and RMT its M0 and projection (both M0 start from the mean token embedding).
full_context reads [story; question], no_context reads the question alone.

Each method writes `<out>/<method>/result.json`; after every run the script collects all results
under `<out>` that share its settings into `<results>.json` / `.md`, so methods can be run one at a
time (or in separate processes) and still land in one table. Data is GENERATED bAbI-style, not the
bAbI benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from gradmem.build import build_model, build_task, load_checkpoint
from gradmem.data import iterate_batches
from gradmem.evaluate import evaluate
from gradmem.model import MemoryModel
from gradmem.train import Trainer
from gradmem.training_free import mean_embedding

METHODS = ("gradmem", "rmt", "full_context", "no_context")
SHARED = (
    "model",
    "task",
    "questions_per_story",
    "statements_per_question",
    "train_top_layers",
    "single_fact_steps",
    "two_fact_steps",
    "steps",
    "batch_size",
    "lr",
    "adam_beta2",
    "eval_examples",
    "test_examples",
    "seed",
)
# Shared settings added after the first runs, with the value those runs used: a record without one still
# lands in the table of a run that leaves it at this value.
SHARED_DEFAULTS = {"adam_beta2": 0.999, "two_fact_steps": 0}


def method_spec(args: argparse.Namespace, name: str) -> dict[str, Any]:
    if name == "gradmem":
        optim = {"name": args.inner_optim, "lr": args.inner_lr, "clip_norm": args.inner_clip_norm}
        return {
            "name": name,
            "num_memory": args.memory,
            "inner_loss_weight": args.inner_loss_weight,
            "write": {"steps": args.write_steps, "optim": optim},
        }
    if name == "rmt":
        return {"name": name, "num_memory": args.memory, "steps": 1}
    return {"name": name}


def make_spec(args: argparse.Namespace, name: str) -> dict[str, Any]:
    tokenizer = {"type": "hf", "pretrained": args.model}
    task = {
        "name": "babi",
        "task": args.task,
        "questions_per_story": args.questions_per_story,
        "statements_per_question": args.statements_per_question,
        "tokenizer": tokenizer,
    }
    backbone = {"type": "hf", "pretrained": args.model, "freeze": True, "train_top_layers": args.train_top_layers}
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
    return {"task": task, "backbone": backbone, "method": method_spec(args, name), "train": train}


def mean_embedding_init(model: MemoryModel) -> None:
    """M0 rows = the mean input embedding (plus small noise): a vector the pretrained model has seen the like of."""
    memory0 = getattr(model.method, "memory0", None)
    if memory0 is None:
        return
    with torch.no_grad():
        memory0.copy_(mean_embedding(model.backbone).expand_as(memory0) + 0.01 * torch.randn_like(memory0))


def count_trainable(model: MemoryModel) -> dict[str, int]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return {
        "backbone": sum(p.numel() for n, p in params if n.startswith("backbone.")),
        "method": sum(p.numel() for n, p in params if n.startswith("method.")),
    }


def write_curve(model: MemoryModel, examples: list, pad_id: int) -> dict[str, float]:
    """GradMem only: mean reconstruction loss of the held-out stories before and after the WRITE."""
    before = after = 0.0
    with torch.no_grad():
        for batch in iterate_batches(examples, 8, pad_id):
            memory = model.write(batch.context, measure_final=True)
            before += memory.stats.losses[0].sum().item()
            after += memory.stats.final_loss.sum().item()
    return {"write_loss_before": before / len(examples), "write_loss_after": after / len(examples)}


def swapped_memory_loss(model: MemoryModel, examples: list, pad_id: int, steps: int | None = None) -> float:
    """Mean READ loss when each question is read with the memory of the next story in its batch.

    Against the method's own READ loss this shows whether the answer comes from the memory at all
    (equal losses: the reader ignores it)."""
    total = 0.0
    with torch.no_grad():
        for batch in iterate_batches(examples, 8, pad_id):
            memory = model.write(batch.context, steps=steps)
            swapped = replace(
                memory,
                prefix=memory.prefix.roll(1, 0),
                lengths=None if memory.lengths is None else memory.lengths.roll(1, 0),
            )
            total += model.read(swapped, batch.query, batch.target).per_example_loss.sum().item()
    return total / len(examples)


def add_swap_check(name: str, model: MemoryModel, rows: dict[str, Any], test: list, pad_id: int) -> None:
    """Memory methods only: store the swapped-memory READ loss of `model` in each of its result rows."""
    if name not in ("gradmem", "rmt"):
        return
    model.eval()
    for key, row in rows.items():
        steps = int(key.rsplit("_K", 1)[1]) if "_K" in key else None  # GradMem rows: the K they were scored with
        row["read_loss_swapped"] = swapped_memory_loss(model, test, pad_id, steps)


def best_valid_step(history: list[dict[str, Any]]) -> int:
    """Step of the checkpoint scored: the best validation of the last stage (the trainer keeps no other)."""
    evals = [h for h in history if h["kind"] == "eval"]
    last = max(h["stage"] for h in evals)
    return max((h for h in evals if h["stage"] == last), key=lambda h: h["exact_match"])["step"]


def run_dir(args: argparse.Namespace, name: str) -> Path:
    """`<out>/<method>`, or `<out>/<method>_<variant>` to keep several runs of one method."""
    return Path(args.out) / (f"{name}_{args.variant}" if args.variant else name)


def run_method(args: argparse.Namespace, name: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    spec = make_spec(args, name)
    task = build_task(spec)
    model = build_model(spec, task)
    mean_embedding_init(model)
    out = run_dir(args, name)
    started = time.time()
    trainer = Trainer.from_spec(model, spec, out, on_log=lambda r: print(name, json.dumps(r), flush=True))
    trainer.train()
    train_s = time.time() - started
    best, _, _ = load_checkpoint(out / "best")
    test = task.make_split("test", args.test_examples, args.seed)
    pad, eos = task.tokenizer.pad_id, task.tokenizer.eos_id
    rows: dict[str, Any] = {}
    if name == "gradmem":
        for k in sorted({0, args.write_steps, 2 * args.write_steps}):
            rows[f"gradmem_K{k}"] = evaluate(best, test, 8, steps=k, pad_id=pad, generate=True, eos_id=eos)
        rows[f"gradmem_K{args.write_steps}"].update(write_curve(best, test[:64], pad))
    else:
        rows[name] = evaluate(best, test, 8, pad_id=pad, generate=True, eos_id=eos)
    add_swap_check(name, best, rows, test, pad)
    for key, row in rows.items():
        print(key, json.dumps(row), flush=True)
    record = {
        "method": name,
        "settings": {k: getattr(args, k) for k in SHARED},
        "spec": spec,
        "trainable_params": count_trainable(model),
        "train_seconds": round(train_s, 1),
        "best_valid_step": best_valid_step(trainer.history),
        "train_history": trainer.history,
        "test_examples": len(test),
        "results": rows,
        "command": "python benchmarks/babi_pretrained.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if v not in (None, "") and not isinstance(v, bool)
        ),
    }
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / "result.json")
    return record


def curve(record: dict[str, Any]) -> str:
    """Validation EM by step; evaluations of a warm-up stage are marked `(1f)` / `(2f)` (statements per story)."""
    evals = [h for h in record["train_history"] if h["kind"] == "eval"]
    stages = record["spec"]["train"].get("curriculum", [])[:-1]
    marks = [f" ({stage['statements_per_question']}f)" for stage in stages]
    return ", ".join(
        f"{h['step']}{marks[h['stage']] if h['stage'] < len(marks) else ''}: {100 * h['exact_match']:.0f}"
        for h in evals
    )


def swapped_cell(row: dict[str, Any]) -> str:
    return f"{row['read_loss_swapped']:.3f}" if "read_loss_swapped" in row else "-"


def inner_settings(record: dict[str, Any]) -> str:
    """' (inner lr 1.0)' for GradMem runs (plus the inner-loss weight when on), '' for the others."""
    method = record["spec"]["method"]
    if method["name"] != "gradmem":
        return ""
    weight = f", inner-loss weight {method['inner_loss_weight']}" if method["inner_loss_weight"] else ""
    return f" (inner lr {method['write']['optim']['lr']}{weight})"


def constant_answer_em(args: argparse.Namespace, split: str, num: int) -> tuple[str, float]:
    """The most frequent answer of a split and the EM of always giving it (the floor of a memoryless reader)."""
    questions = build_task(make_spec(args, "no_context")).questions(split, num, args.seed)
    answer, count = Counter(q.answer for q in questions).most_common(1)[0]
    return answer, count / len(questions)


def report(args: argparse.Namespace) -> None:
    """Collect every `<out>/*/result.json` with this run's settings into `<results>.json/.md`."""
    settings = {k: getattr(args, k) for k in SHARED}
    records = []
    for path in sorted(Path(args.out).glob("*/result.json")):
        record = json.loads(path.read_text())
        if {**SHARED_DEFAULTS, **record["settings"]} == settings:
            records.append(record)
    records.sort(key=lambda r: METHODS.index(r["method"]))
    if not records:
        return
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"data": "GENERATED bAbI-style QA (not the bAbI benchmark)", "settings": settings, "records": records},
            indent=2,
        )
    )
    s = settings
    valid_answer, valid_share = constant_answer_em(args, "valid", s["eval_examples"])
    test_answer, test_share = constant_answer_em(args, "test", s["test_examples"])
    warmup = (
        (
            f", the first {s['single_fact_steps']} of them on one-statement, one-question stories (warm-up "
            "stage, marked (1f) below)"
        )
        if s["single_fact_steps"]
        else ""
    )
    if s["two_fact_steps"]:
        warmup += f", then {s['two_fact_steps']} on two-statement, one-question stories (marked (2f))"
    lines = [
        f"# bAbI QA{s['task']} (GENERATED bAbI-style data) with {s['model']}: same budget for every method",
        "",
        f"Every method trains the top {s['train_top_layers']} decoder layers + final norm of {s['model']} "
        f"(embeddings and any lower layers frozen) for {s['steps']} steps x batch {s['batch_size']}{warmup} "
        f"(AdamW lr {s['lr']}, betas (0.9, {s['adam_beta2']}), 1 thread); "
        f"the checkpoint scored is the best on {s['eval_examples']} validation questions; "
        f"{s['test_examples']} held-out test questions. EM = teacher-forced exact match on the answer "
        "tokens; gen EM = greedy generation; 'with another story's memory' = READ loss (mean answer-token "
        "cross-entropy) when each test question reads the memory of the next story in its batch "
        "(GradMem / RMT; no higher than the READ loss = the memory is not used). Train min = wall time of training incl. validation, on a shared "
        f"2-core CPU. Constant-answer floor: always answering '{test_answer}' scores {100 * test_share:.1f}% "
        f"on test ('{valid_answer}': {100 * valid_share:.1f}% on validation).",
        "",
        "| method | trainable backbone / method params | train min | EM % | gen EM % | READ loss | with another story's memory | valid EM % by step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        p = r["trainable_params"]
        for key, row in r["results"].items():
            lines.append(
                f"| {key}{inner_settings(r)} | {p['backbone'] / 1e6:.1f}M / {p['method'] / 1e6:.2f}M | {r['train_seconds'] / 60:.1f} | "
                f"{100 * row['exact_match']:.1f} | {100 * row['generated_exact_match']:.1f} | "
                f"{row['loss']:.3f} | {swapped_cell(row)} | {curve(r)} |"
            )
    for r in records:
        if r["method"] == "gradmem":
            wl = [
                (h["step"], h["write_loss"][0]) for h in r["train_history"] if h["kind"] == "train" and h["write_loss"]
            ]
            row = r["results"][f"gradmem_K{r['spec']['method']['write']['steps']}"]
            lines += [
                "",
                f"GradMem{inner_settings(r)} WRITE config: {json.dumps(r['spec']['method'])}.",
                f"Held-out reconstruction loss before / after the WRITE: {row['write_loss_before']:.3f} / "
                f"{row['write_loss_after']:.3f} nats per token.",
                "Training write loss (before the step) by step: "
                + ", ".join(f"{st}: {v:.2f}" for st, v in wl[::2])
                + ".",
            ]
    lines += ["", "Commands (one per method; each rewrites this file from all results under its --out):", ""]
    lines += [f"    {c}" for c in dict.fromkeys(r["command"] for r in records)]
    lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {list(METHODS)}")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", type=int, default=1)
    parser.add_argument("--questions-per-story", type=int, default=2)
    parser.add_argument("--statements-per-question", type=int, default=None)
    parser.add_argument(
        "--train-top-layers", type=int, default=30, help="decoder layers trained (top k; 30 = all of SmolLM2)"
    )
    parser.add_argument(
        "--single-fact-steps", type=int, default=150, help="warm-up steps on one-fact stories (0 = none)"
    )
    parser.add_argument(
        "--two-fact-steps",
        type=int,
        default=SHARED_DEFAULTS["two_fact_steps"],
        help="then warm-up steps on two-statement, one-question stories (0 = none)",
    )
    parser.add_argument("--memory", type=int, default=8)
    parser.add_argument("--write-steps", type=int, default=1)
    parser.add_argument("--inner-optim", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--inner-lr", type=float, default=1.0)
    parser.add_argument("--inner-clip-norm", type=float, default=1.0)
    parser.add_argument("--inner-loss-weight", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--adam-beta2",
        type=float,
        default=SHARED_DEFAULTS["adam_beta2"],
        help="AdamW beta2 of every method (0.95 damps the gradient spikes of second-order training)",
    )
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=64)
    parser.add_argument("--test-examples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/babi_qa1_full")
    parser.add_argument("--results", default="results/pretrained/babi_qa1_full_cpu")
    parser.add_argument("--variant", default="", help="suffix of the run folder, to keep several runs of one method")
    parser.add_argument(
        "--swap-check",
        action="store_true",
        help="only add the swapped-memory READ loss to finished GradMem / RMT runs of --methods",
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the results files")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.methods.split(",") if n]
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {list(METHODS)}")
    if args.swap_check:
        for name in names:
            path = run_dir(args, name) / "result.json"
            record = json.loads(path.read_text())
            best, task, _ = load_checkpoint(path.parent / "best")
            add_swap_check(
                name,
                best,
                record["results"],
                task.make_split("test", args.test_examples, args.seed),
                task.tokenizer.pad_id,
            )
            path.write_text(json.dumps(record, indent=2))
    elif not args.report_only:
        for name in names:
            run_method(args, name)
            report(args)
    report(args)


if __name__ == "__main__":
    main()
