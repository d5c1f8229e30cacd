"""Why does full context not learn generated QA1 from scratch? A short training probe, split by where the answer is.

    python benchmarks/babi_binding_probe.py --statements 2 --steps 3000
    python benchmarks/babi_binding_probe.py --statements 2 --steps 3000 --layout compact
    python benchmarks/babi_binding_probe.py --statements 2 --steps 5000 --layout compact --switch 2500

Trains the full-context method of a bAbI spec (default configs/babi_qa1_cpu.json: the built-in
2 x 64 decoder, AdamW 1e-3, batch 32) on QA1 stories of `--statements` statements and one question,
with a plain loop, and prints every `--every` steps the validation exact match split by how many
statements back the asked person last moved ("back0": the last statement, which the "answer the
most recent place" shortcut gets right; "back1", ...: only a model that binds people to places).

`--layout` rewrites the text of every example (training and validation) to test what makes the
binding hard: "compact" drops the verb phrase ("Sandra garden." for "Sandra moved to the garden.",
the name right before its place); "nameend" ends the query on the name ("Where is Sandra") instead
of "\\nQuestion: Where is Sandra?\\nAnswer:". `--switch N` trains N steps on the `--layout` text, then
goes on with the task's own text (a warm start). Nothing is saved; the numbers go to stdout.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
from pathlib import Path

import torch

from gradmem.core.batch import QUESTION_LAYOUT, Example, collate, iterate_batches
from gradmem.core.task import answer_example
from gradmem.evaluation.metrics import exact_match_from_logits
from gradmem.run.build import build_model, build_task
from gradmem.tasks.babi_format import BabiQuestion
from gradmem.tasks.babi_words import MOVES

ROOT = Path(__file__).resolve().parent.parent
VERB_PHRASE = re.compile(r" (" + "|".join(sorted(MOVES, key=len, reverse=True)) + r") the ")
LAYOUTS = ("normal", "compact", "nameend")


def person(q: BabiQuestion) -> str:
    return q.question.split()[-1].rstrip("?")


def statements_back(q: BabiQuestion) -> int:
    """How many statements after the asked person's last one (0: it is the last statement)."""
    last = max(i for i, s in enumerate(q.statements) if s.split()[0] == person(q))
    return len(q.statements) - 1 - last


def to_example(tokenizer, q: BabiQuestion, layout: str) -> Example:  # noqa: ANN001 (any task tokenizer)
    context, query = " ".join(q.statements), QUESTION_LAYOUT.format(question=q.question)
    if layout == "compact":
        context = VERB_PHRASE.sub(" ", context)
    elif layout == "nameend":
        query = f" Where is {person(q)}"
    return answer_example(tokenizer, context, query, f" {q.answer}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "babi_qa1_cpu.json"))
    parser.add_argument("--statements", type=int, default=2, help="statements before the one question")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--every", type=int, default=500, help="steps between evaluations")
    parser.add_argument("--layout", choices=LAYOUTS, default="normal")
    parser.add_argument("--switch", type=int, default=0, help="after this many steps train on the task's own text")
    parser.add_argument("--lr", type=float, default=None, help="default: the spec's train.lr")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    spec = json.loads(Path(args.config).read_text())
    spec["method"] = {"name": "full_context"}
    spec["task"].update(statements_per_question=args.statements, questions_per_story=1)
    task = build_task(spec)
    model = build_model(spec, task)
    train = spec["train"]
    lr = args.lr or train["lr"]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train.get("weight_decay", 0.0))
    valid = task.questions("valid", 600, args.seed)
    backs = [statements_back(q) for q in valid]
    layout, pool, draw, start = args.layout, [], 0, time.time()
    for step in range(1, args.steps + 1):
        if args.switch and step == args.switch + 1:
            layout, pool = "normal", []
            print(f"step {step}: switch to the task's own text", flush=True)
        if not pool:
            draw += 1
            pool = [
                to_example(task.tokenizer, q, layout) for q in task.questions("train", 6400, 100_000 * args.seed + draw)
            ]
        batch, pool = collate(pool[: train["batch_size"]]), pool[train["batch_size"] :]
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / train.get("warmup_steps", 100))
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("grad_clip", 1.0))
        opt.step()
        if step % args.every == 0:
            model.eval()
            right: list[bool] = []
            with torch.no_grad():
                for b in iterate_batches([to_example(task.tokenizer, q, layout) for q in valid], 200):
                    read = model.read(model.write(b.context), b.query, b.target)
                    right += exact_match_from_logits(read.logits, b).tolist()
            model.train()
            split = collections.defaultdict(list)
            for k, ok in zip(backs, right):
                split[k].append(ok)
            parts = " ".join(f"back{k} {sum(v) / len(v):.2f}" for k, v in sorted(split.items()))
            em = sum(right) / len(right)
            print(
                f"step {step} ({layout}, {time.time() - start:.0f} s): loss {loss.item():.3f} EM {em:.3f} | {parts}",
                flush=True,
            )


if __name__ == "__main__":
    main()
