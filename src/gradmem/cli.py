"""The `gradmem` command line: train, eval, data, and the memory commands (write, ask, inspect,
store, serve; see gradmem.cli_memory).

    gradmem train --config configs/kv_demo.json --out runs/demo [--set train.steps=100 ...]
    gradmem eval runs/demo/best [--steps 0,1,2,5] [--generate]
    gradmem write runs/demo/best --context story.txt --store mem      # -> memory id
    gradmem ask runs/demo/best ID --store mem -q "?!ab:" -q "?!cd:"
    gradmem serve runs/demo/best --store mem --port 8000
    gradmem data --config configs/kv_demo.json --split valid -n 1000 --out valid.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gradmem.build import apply_overrides, build_model, build_task, load_checkpoint
from gradmem.cli_memory import add_memory_commands
from gradmem.data import save_jsonl


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    try:
        spec = json.loads(Path(args.config).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"gradmem: cannot read config {args.config}: {err}")
    return apply_overrides(spec, args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gradmem.train import Trainer

    spec = _load_spec(args)
    torch.manual_seed(spec.get("train", {}).get("seed", 0))
    model = build_model(spec)
    bar = tqdm(total=spec.get("train", {}).get("steps", 0), desc="train", dynamic_ncols=True, file=sys.stderr)

    def on_log(record: dict[str, Any]) -> None:
        if record["kind"] == "train":
            bar.set_postfix(loss=f"{record['loss']:.3f}", stage=record["stage"], refresh=False)
            bar.update(record["step"] - bar.n)
        else:
            curve = ", ".join(f"{x:.3f}" for x in record["write_loss"])
            bar.write(f"step {record['step']} stage {record['stage']}: EM {record['exact_match']:.3f} "
                      f"token acc {record['token_accuracy']:.3f} write loss [{curve}]", file=sys.stderr)

    trainer = Trainer(model, spec, args.out, on_log)
    if args.resume and trainer.resume():
        bar.write(f"resumed {args.out} at step {trainer.step}", file=sys.stderr)
        bar.update(trainer.step)
    started = time.time()
    final = trainer.train()
    bar.close()
    summary = {"step": trainer.step, "stage": trainer.stage, "exact_match": final.get("exact_match"),
               "seconds": round(time.time() - started, 1), "out": str(args.out)}
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gradmem.evaluate import evaluate

    model, task, spec = load_checkpoint(args.checkpoint)
    if args.data:
        from gradmem.data_files import load_examples

        try:
            examples = load_examples(args.data, task, model.max_sequence_tokens)
        except (OSError, ValueError) as err:
            raise SystemExit(f"gradmem eval: {err}")
    else:
        seed = spec.get("train", {}).get("seed", 0) if args.seed is None else args.seed
        examples = task.make_split(args.split, args.examples, seed)
    results = []
    for steps in ([None] if args.steps is None else [int(s) for s in args.steps.split(",")]):
        result = evaluate(model, examples, args.batch_size, steps=steps, lr=args.lr, generate=args.generate,
                          eos_id=None, pad_id=task.tokenizer.pad_id)
        results.append({"write_steps": steps, **result})
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        source = {"data": args.data} if args.data else {"split": args.split}
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, "task": task.describe(), **source,
                                              "results": results}, indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    spec = _load_spec(args)
    task = build_task(spec)
    save_jsonl(task.make_split(args.split, args.num, args.seed), args.out)
    print(json.dumps({"out": args.out, "examples": args.num, "task": task.describe()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradmem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="meta-train a model from a JSON run spec")
    p.add_argument("--config", required=True, help="JSON run spec (task, backbone, method, train)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.steps=100 method.write.steps=1")
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, last/ and best/ checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last if it exists")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out data")
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None, metavar="FILE.jsonl",
                   help="score these examples instead of a generated split: strings {context, query, target} "
                        "tokenised with the checkpoint's tokenizer, or token ids as `gradmem data` writes them")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--examples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the run's seed)")
    p.add_argument("--steps", default=None, help="WRITE steps at evaluation, comma-separated for a sweep")
    p.add_argument("--lr", type=float, default=None, help="inner lr at evaluation")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--generate", action="store_true", help="also score greedy generation")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.set_defaults(func=cmd_eval)

    add_memory_commands(sub)  # write, ask, inspect, store, serve

    p = sub.add_parser("data", help="export a task split as JSONL")
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("-n", "--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as err:
        print(f"gradmem {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
