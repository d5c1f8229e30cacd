"""The `gradmem` command line: train, eval, data, and the memory commands (write, ask, inspect,
store, serve; see gradmem.cli.memory_commands).

    gradmem train --config configs/kv_demo.json --out runs/demo [--set train.steps=100 ...]
    gradmem eval runs/demo/best [--steps 0,1,2,5] [--generate]
    gradmem write runs/demo/best --context story.txt --store mem      # -> memory id
    gradmem ask runs/demo/best ID --store mem -q "?!ab:" -q "?!cd:"
    gradmem serve runs/demo/best --store mem --port 8000
    gradmem data --config configs/kv_demo.json --split valid -n 1000 --out valid.jsonl

Every error is reported as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gradmem.cli.memory_commands import add_device_option, add_memory_commands
from gradmem.cli.options import float_list, int_list
from gradmem.core.batch import save_jsonl
from gradmem.core.checkpoint_folder import recover
from gradmem.core.device import device_name, device_option, peak_memory_mib, precision_note, resolve_device
from gradmem.core.errors import ConfigError, GradmemError
from gradmem.run.build import build_task
from gradmem.run.checkpoint import load_checkpoint, load_spec
from gradmem.run.overrides import apply_overrides
from gradmem.run.spec import read_spec, validate_spec
from gradmem.training.start import refuse_existing_run, start_run


def _load_spec(args: argparse.Namespace, overrides: bool = True) -> dict[str, Any]:
    spec = read_spec(args.config)
    spec = apply_overrides(spec, args.set or []) if overrides and isinstance(spec, dict) else spec
    validate_spec(spec)
    return spec


def _flat(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} for every leaf of a nested spec."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    a, b = _flat(before), _flat(after)
    return [
        f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


def _train_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec a run trains with. Resuming continues the spec saved in OUT/last (what the run was
    started with); only train.* overrides may change it and each change is printed."""
    last = Path(args.out) / "last"
    if args.resume:
        recover(last)  # a save interrupted by a crash is finished or undone first
    refuse_existing_run(args.out, args.resume)  # before reading any spec: the folder is the first mistake
    if not (args.resume and (last / "spec.json").exists()):
        if args.config is None:
            raise ConfigError("--config is needed to start a run (only --resume of an existing run goes without)")
        return _load_spec(args)
    saved = load_spec(last)
    refused = [item for item in args.set or [] if not item.startswith("train.")]
    if refused:
        raise ConfigError(
            f"--resume continues the spec saved in {last}; only train.* settings may change, not {refused}"
        )
    spec = apply_overrides(saved, args.set or [])
    validate_spec(spec)
    for change in _changes(saved, spec):
        print(f"resume: changed from the saved spec: {change}", file=sys.stderr)
    if args.config is not None:
        ignored = _changes(saved, _load_spec(args, overrides=False))
        if ignored:
            print(
                f"resume: {args.config} differs from the saved spec in {len(ignored)} setting(s), ignored: "
                + "; ".join(ignored),
                file=sys.stderr,
            )
    return spec


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    spec = _train_spec(args)
    if args.device is not None:  # recorded in the spec, so a --resume without it stays on this device
        spec = apply_overrides(spec, [f"train.device={args.device}"])
        validate_spec(spec)
    device = resolve_device(spec.get("train", {}).get("device"))  # before building: a bad device fails at once
    bar: Any = None  # made after resuming, so an error is never printed behind a progress bar

    def on_log(record: dict[str, Any]) -> None:
        if record["kind"] == "train":
            bar.set_postfix(loss=f"{record['loss']:.3f}", stage=record["stage"], refresh=False)
            bar.update(record["step"] - bar.n)
        else:
            curve = ", ".join(f"{x:.3f}" for x in record["write_loss"])
            bar.write(
                f"step {record['step']} stage {record['stage']}: EM {record['exact_match']:.3f} "
                f"token acc {record['token_accuracy']:.3f} write loss [{curve}]",
                file=sys.stderr,
            )

    precision = precision_note(spec["backbone"].get("bf16", False), device)
    print(f"gradmem train: on {device} ({device_name(device)}), {precision}", file=sys.stderr)
    # a partial or damaged last/ raises: never a silent restart
    run = start_run(spec, args.out, args.resume, device=device, on_log=on_log)
    trainer, resumed = run.trainer, run.resumed
    bar = tqdm(total=spec.get("train", {}).get("steps", 0), desc="train", dynamic_ncols=True, file=sys.stderr)
    if resumed:
        bar.write(f"resumed {args.out} at step {trainer.step}", file=sys.stderr)
        bar.update(trainer.step)
    elif args.resume:
        bar.write(f"resume: no checkpoint in {Path(args.out) / 'last'}; starting at step 0", file=sys.stderr)
    started = time.time()
    final = trainer.train()
    bar.close()
    summary = {
        "step": trainer.step,
        "stage": trainer.stage,
        "exact_match": final.get("exact_match"),
        "seconds": round(time.time() - started, 1),
        "out": str(args.out),
        "device": str(device),
        **({"peak_gpu_mib": peak_memory_mib(device)} if device.type == "cuda" else {}),
    }
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from gradmem.evaluation.evaluate import evaluate

    model, task, spec = load_checkpoint(args.checkpoint, resolve_device(args.device))
    answers = None  # free-text ground truths of a question file (SQuAD EM / F1 of generated answers)
    if args.data:
        from gradmem.tasks.data_files import load_data_file

        data = load_data_file(args.data, task, model.max_sequence_tokens)  # a bad line: one-line error, rc 2
        examples, answers = data.examples, data.answers
    else:
        seed = spec.get("train", {}).get("seed", 0) if args.seed is None else args.seed
        examples = task.make_split(args.split, args.examples, seed)
    results = []
    settings = list(itertools.product(args.steps or [None], args.lr or [None]))
    # on a terminal only (disable=None): results go to stdout as JSON lines, the bar to stderr
    bar = tqdm(total=len(settings) * len(examples), desc="eval", unit="ex", file=sys.stderr, disable=None)
    for steps, lr in settings:
        result = evaluate(
            model,
            examples,
            args.batch_size,
            steps=steps,
            lr=lr,
            generate=args.generate,
            eos_id=None,
            pad_id=task.tokenizer.pad_id,
            on_batch=bar.update,
        )
        if answers is not None and args.generate:
            from gradmem.evaluation.text_eval import score_answers

            text = score_answers(
                model, task.tokenizer, examples, answers, batch_size=args.batch_size, steps=steps, lr=lr
            )
            result.update(text_exact_match=text["exact_match"], text_f1=text["f1"])
        results.append({"write_steps": steps, **({"write_lr": lr} if lr is not None else {}), **result})
        bar.write(json.dumps(results[-1]), file=sys.stdout)
        sys.stdout.flush()
    bar.close()
    if args.out:
        source = {"data": args.data} if args.data else {"split": args.split}
        Path(args.out).write_text(
            json.dumps({"checkpoint": args.checkpoint, "task": task.describe(), **source, "results": results}, indent=2)
        )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    spec = _load_spec(args)
    task = build_task(spec)
    save_jsonl(task.make_split(args.split, args.num, args.seed), args.out)
    print(json.dumps({"out": args.out, "examples": args.num, "task": task.describe()}))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (subcommand parsers inherit the class)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


MAX_EXAMPLES = 1_000_000  # a generated split is held in memory whole (~0.5 kB per 2-pair key-value example)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def example_count(text: str) -> int:
    """An argparse type: a number of examples to generate, 1..MAX_EXAMPLES."""
    value = positive_int(text)
    if value > MAX_EXAMPLES:
        raise argparse.ArgumentTypeError(
            f"{value} examples are more than the limit of {MAX_EXAMPLES} a split is generated in memory with; "
            "evaluate a larger set in parts (--seed) or from files (--data)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradmem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_eval_command(sub)
    add_memory_commands(sub)  # write, ask, inspect, store, serve
    add_data_command(sub)
    return parser


def add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a model from a JSON run spec")
    p.add_argument(
        "--config",
        default=None,
        help="JSON run spec (task, backbone, method, train); "
        "with --resume of an existing run the spec saved in OUT/last is used",
    )
    p.add_argument(
        "--set",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. train.steps=100 method.write.steps=1 "
        "(on --resume only train.* ones, each printed as a change)",
    )
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl, last/ and best/ checkpoints")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last if it exists (a damaged or partial last/ is refused with the reason); "
        "without it, an OUT that already holds a run is refused",
    )
    p.add_argument(
        "--device",
        type=device_option,
        default=None,
        help="where to train: auto (CUDA when available), cpu, cuda or cuda:N; sets train.device "
        "(default: the spec's, itself auto); a run may resume on another device",
    )
    p.set_defaults(func=cmd_train)


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on held-out data")
    p.add_argument("checkpoint")
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE.jsonl",
        help="score these examples instead of a generated split: strings {context, query, target} "
        "tokenised with the checkpoint's tokenizer, or token ids as `gradmem data` writes them",
    )
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--examples", type=example_count, default=1000)
    p.add_argument("--seed", type=int, default=None, help="data seed (default: the run's seed)")
    p.add_argument(
        "--steps", type=int_list, default=None, help="WRITE steps at evaluation, comma-separated for a sweep"
    )
    p.add_argument(
        "--lr",
        type=float_list,
        default=None,
        help="inner lr at evaluation, comma-separated for a sweep (with --steps: every pair)",
    )
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--generate", action="store_true", help="also score greedy generation")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    add_device_option(p)
    p.set_defaults(func=cmd_eval)


def add_data_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="export a task split as JSONL")
    p.add_argument("--config", required=True)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--split", default="valid", choices=["train", "valid", "test"])
    p.add_argument("-n", "--num", type=example_count, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_data)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here, not at interpreter exit
        return code
    except BrokenPipeError:  # the reader went away (`gradmem store list | head -1`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail again
        return 0
    except KeyboardInterrupt:
        print(f"gradmem {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:  # the input or the batch did not fit in RAM: say so, not a traceback
        print(
            f"gradmem {args.command}: error: out of memory; use a smaller input, fewer examples or a smaller "
            "--batch-size",
            file=sys.stderr,
        )
        return 2
    except (GradmemError, ValueError, KeyError, OSError, RuntimeError) as err:
        text = err.args[0] if type(err) is KeyError and err.args else err  # KeyError's str() adds quotes
        print(f"gradmem {args.command}: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
