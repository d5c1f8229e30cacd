"""Where a trained bAbI model fails: exact match split by how far back its evidence lies.

    python benchmarks/babi_errors.py --checkpoint runs/babi/qa2_gradmem_k2/s0/best
    python benchmarks/babi_errors.py --checkpoint checkpoints/babi --task 1 --examples 2000 --steps 3

Scores `--examples` held-out questions (test split, `--test-seed`, as benchmarks/babi_table.py) of
each task the checkpoint was trained on (or `--task`) and splits teacher-forced exact match by
- "back": statements after the earliest supporting fact (0: it is the last statement): how long
  the evidence must be held, the quantity a memory of fixed size is stressed by;
- "statements": the context's length in statements;
and counts the wrong answers that name the place of the context's last move ("latest place"):
the recency shortcut a model falls back on when it has not bound people to places.
Results: results/babi/errors_<name>.{json,md}. Generated bAbI-style stories, not the benchmark.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, save_results  # noqa: E402

from gradmem.cli.main import positive_int  # noqa: E402
from gradmem.core.batch import iterate_batches  # noqa: E402
from gradmem.core.device import cpu_model_name, device_option  # noqa: E402
from gradmem.core.errors import CheckpointError  # noqa: E402
from gradmem.evaluation.metrics import exact_match_from_logits  # noqa: E402
from gradmem.run.build import build_task  # noqa: E402
from gradmem.run.checkpoint import load_checkpoint  # noqa: E402
from gradmem.tasks.babi import BabiConfig, config_tasks  # noqa: E402
from gradmem.tasks.babi_format import BabiQuestion  # noqa: E402
from gradmem.tasks.babi_words import PLACES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def statements_back(q: BabiQuestion) -> int:
    """Statements after the earliest supporting fact (0: the evidence is the last statement)."""
    return len(q.statements) - 1 - min(q.supporting, default=len(q.statements) - 1)


def latest_place(q: BabiQuestion) -> str | None:
    """The place named by the context's last statement that names one."""
    for statement in reversed(q.statements):
        named = [w.rstrip(".") for w in statement.split() if w.rstrip(".") in PLACES]
        if named:
            return named[-1]
    return None


@torch.no_grad()
def predictions(
    model: Any, task: Any, questions: list[BabiQuestion], steps: int | None, lr: float | None
) -> list[dict]:
    """Per question: right or wrong (teacher forced, the answer's tokens), and the predicted answer."""
    model.eval()
    device = next(model.parameters()).device
    out: list[dict] = []
    examples = [task.to_example(q) for q in questions]
    for start, batch in zip(range(0, len(examples), 250), iterate_batches(examples, 250)):
        batch = batch.to(device)
        read = model.read(model.write(batch.context, steps=steps, lr=lr), batch.query, batch.target)
        right = exact_match_from_logits(read.logits, batch).tolist()
        first = read.logits[:, 0].argmax(-1).tolist()  # the answer word's first token
        for i, (ok, token) in enumerate(zip(right, first)):
            out.append(
                {"right": bool(ok), "predicted": task.tokenizer.decode([token]).strip(), "q": questions[start + i]}
            )
    return out


def split_by(rows: list[dict], key: Any) -> list[list[Any]]:
    """Markdown rows: bucket, questions, EM %, wrong answers that name the latest place (% of wrong)."""
    buckets: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        buckets[key(r["q"])].append(r)
    table = []
    for bucket in sorted(buckets):
        group = buckets[bucket]
        wrong = [r for r in group if not r["right"]]
        shortcut = sum(r["predicted"] == latest_place(r["q"]) for r in wrong)
        table.append(
            [
                bucket,
                len(group),
                f"{100 * (len(group) - len(wrong)) / len(group):.1f}",
                f"{100 * shortcut / len(wrong):.0f}" if wrong else "-",
            ]
        )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a bAbI checkpoint folder")
    parser.add_argument("--task", type=int, default=None, help="one task of the checkpoint's (default: each)")
    parser.add_argument("--examples", type=positive_int, default=1000, help="test questions per task")
    parser.add_argument("--test-seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="test-time WRITE steps K (default: the trained K)")
    parser.add_argument("--lr", type=float, default=None, help="test-time inner lr (default: the trained one)")
    parser.add_argument("--name", default=None, help="results name (default: the checkpoint's folder names)")
    parser.add_argument("--out", default=str(ROOT / "results" / "babi"))
    parser.add_argument("--device", type=device_option, default="auto")
    args = parser.parse_args(argv)

    try:
        model, _, spec = load_checkpoint(args.checkpoint, args.device)
    except (CheckpointError, OSError) as err:
        parser.error(str(err))
    if spec["task"].get("name") != "babi":
        parser.error(f"{args.checkpoint} is a {spec['task'].get('name')!r} checkpoint, not a bAbI one")
    trained = config_tasks(BabiConfig(task=spec["task"]["task"]))
    if args.task is not None and args.task not in trained:
        parser.error(f"--task {args.task}: the checkpoint was trained on QA{'/'.join(map(str, trained))}")
    folder = Path(args.checkpoint).resolve()
    name = args.name or "_".join(p for p in folder.parts[-3:] if p not in ("runs", "babi", "checkpoints"))
    lines = [
        f"# Errors of {args.checkpoint} (generated bAbI-style, {args.examples} test questions per task, "
        f"test seed {args.test_seed}, K = {args.steps or 'trained'})",
        "",
        "`back`: statements after the earliest supporting fact. `latest place`: share of the wrong "
        "answers that name the place of the context's last move (the recency shortcut).",
    ]
    report: dict[str, Any] = {"checkpoint": str(args.checkpoint), "cpu": cpu_model_name(), "tasks": {}}
    for task_id in [args.task] if args.task is not None else trained:
        task = build_task({"task": {**spec["task"], "task": task_id}})
        questions = task.questions("test", args.examples, args.test_seed)
        rows = predictions(model, task, questions, args.steps, args.lr)
        by_back = split_by(rows, statements_back)
        by_length = split_by(rows, lambda q: len(q.statements))
        em = sum(r["right"] for r in rows) / len(rows)
        report["tasks"][f"QA{task_id}"] = {"exact_match": em, "by_back": by_back, "by_statements": by_length}
        header = ["questions", "EM %", "wrong: latest place %"]
        lines += [
            "",
            f"## QA{task_id}: EM {100 * em:.1f} %",
            "",
            markdown_table(["back", *header], by_back),
            markdown_table(["statements", *header], by_length),
        ]
    command = "python benchmarks/babi_errors.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n".join(lines) + f"\nCommand: `{command}`\n"
    save_results(Path(args.out), f"errors_{name}", report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
