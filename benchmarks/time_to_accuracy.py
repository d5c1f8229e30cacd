"""Time to accuracy: wall time and steps until held-out exact match reaches a target at each
milestone number of key-value pairs, for one run spec with a curriculum, over seeds.

    python benchmarks/time_to_accuracy.py --config configs/kv16_cpu.json --seeds 0,1,2 --minutes 120
    python benchmarks/time_to_accuracy.py --config configs/kv16_cpu.json --seeds 1 --name kv16_cpu   # one seed per process
    python benchmarks/time_to_accuracy.py --config configs/kv16_cpu.json --seeds 0,1,2 --report-only

Each seed trains in runs/time_to_accuracy/<name>/s<seed> under `train.max_minutes` (counted across
resumes, so an interrupted seed continues where it stopped). A milestone of N pairs is reached at
the first validation evaluation on the N-pair stage with EM >= --target (the curriculum's own
advance rule, `train.advance_exact_match`); its time is the run's cumulative training time then,
evaluations included. The best checkpoint of the last stage is then scored on --test-examples
held-out examples (test split, --test-seed, the same for every seed), at the last stage's number of
pairs or at each of --test-pairs. With --choose-steps / --choose-lrs, a GradMem model is also tested
at the trained number of pairs with the test-time WRITE (K, inner lr) that scores best on
--valid-examples of the run's validation split (the paper's test-time extrapolation). Results:
results/time_to_accuracy/<name>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, mean_std, save_results  # noqa: E402

from gradmem.cli.main import positive_int  # noqa: E402
from gradmem.cli.options import float_list, int_list  # noqa: E402
from gradmem.core.device import device_option  # noqa: E402
from gradmem.evaluation.evaluate import choose_write_setting, evaluate  # noqa: E402
from gradmem.run.build import build_model, build_task
from gradmem.run.checkpoint import load_checkpoint  # noqa: E402
from gradmem.run.overrides import apply_overrides
from gradmem.training.trainer import Trainer, read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def stage_pairs(spec: dict[str, Any]) -> list[int]:
    """num_pairs of each curriculum stage (the task's own when there is no curriculum)."""
    return [{**spec["task"], **stage}["num_pairs"] for stage in spec["train"].get("curriculum") or [{}]]


def milestones_reached(
    records: list[dict[str, Any]], pairs: list[int], milestones: list[int], target: float
) -> dict[int, dict[str, float] | None]:
    """For each milestone N: step and minutes of the first eval on an N-pair stage with EM >= target."""
    reached: dict[int, dict[str, float] | None] = {n: None for n in milestones}
    for r in records:
        if r.get("kind") != "eval":
            continue
        n = pairs[r["stage"]]
        if n in reached and reached[n] is None and r["exact_match"] >= target:
            reached[n] = {"step": r["step"], "minutes": round(r["elapsed_s"] / 60, 2), "exact_match": r["exact_match"]}
    return reached


def train_seed(spec: dict[str, Any], run: Path) -> None:
    """Train (or continue) one seed's run until its target, its steps or its time budget."""
    torch.manual_seed(spec["train"]["seed"])
    trainer = Trainer.from_spec(
        build_model(spec),
        spec,
        run,
        on_log=lambda r: (
            r["kind"] == "eval"
            and print(
                f"{run.name} step {r['step']} stage {r['stage']}: EM {r['exact_match']:.3f} "
                f"({r['elapsed_s'] / 60:.1f} min)",
                file=sys.stderr,
                flush=True,
            )
        ),
    )
    if trainer.resume():
        print(f"{run.name}: resumed at step {trainer.step}", file=sys.stderr, flush=True)
    trainer.train()
    (run / "done.json").write_text(json.dumps({"step": trainer.step, "stage": trainer.stage}))


def train_seeds(base: dict[str, Any], runs: Path, seeds: list[int]) -> None:
    """Train every seed of `base` in runs/s<seed>, one after the other; a finished seed is skipped."""
    for seed in seeds:
        run = runs / f"s{seed}"
        if (run / "done.json").exists():
            print(f"{run.name}: done, skipped", file=sys.stderr)
            continue
        train_seed(apply_overrides(base, [f"train.seed={seed}"]), run)


def score_seed(spec: dict[str, Any], run: Path, args: argparse.Namespace) -> dict[str, Any]:
    records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
    pairs = stage_pairs(spec)
    last = [r for r in records if r.get("kind") == "eval"]
    row: dict[str, Any] = {
        "seed": spec["train"]["seed"],
        "run": run.name,
        "milestones": milestones_reached(records, pairs, args.milestones, args.target),
        "steps": last[-1]["step"] if last else 0,
        "minutes": round(last[-1]["elapsed_s"] / 60, 2) if last else 0.0,
        "final_stage_pairs": pairs[last[-1]["stage"]] if last else None,
    }
    best = run / "best"
    if (best / "spec.json").exists():
        model, _, _ = load_checkpoint(best, args.device)
        for n in args.test_pairs or [pairs[-1]]:
            task = build_task({"task": {**spec["task"], "num_pairs": n}})
            test = task.make_split("test", args.test_examples, args.test_seed)
            for k in write_steps_to_test(spec, args):
                result = evaluate(model, test, 250, steps=k)
                row[em_key(n, k, pairs[-1])] = result["exact_match"]
        if args.choose_steps and writes_by_gradient_descent(spec["method"]):
            row.update(score_chosen_write(model, spec, pairs[-1], args))
    row["curve"] = [(r["elapsed_s"] / 60, pairs[r["stage"]], r["exact_match"]) for r in last]
    return row


def score_chosen_write(model: Any, spec: dict[str, Any], pairs: int, args: argparse.Namespace) -> dict[str, Any]:
    """Choose the test-time WRITE (K, inner lr) on the run's validation split, then test with it."""
    task = build_task({"task": {**spec["task"], "num_pairs": pairs}})
    valid = task.make_split("valid", args.valid_examples, spec["train"]["seed"])
    lrs = args.choose_lrs or [model.method.config.write.optim.lr]  # the trained lr, as the model holds it
    best, grid = choose_write_setting(model, valid, args.choose_steps, lrs, batch_size=250)
    test = task.make_split("test", args.test_examples, args.test_seed)
    return {
        "chosen_write": {"steps": best.steps, "lr": best.lr, "valid_em": best.exact_match},
        "chosen_write_grid": [[s.steps, s.lr, s.exact_match] for s in grid],
        "test_em_chosen": evaluate(model, test, 250, steps=best.steps, lr=best.lr)["exact_match"],
    }


def writes_by_gradient_descent(method: dict[str, Any]) -> bool:
    """Methods with a `write` section (K steps of an inner optimiser): GradMem and its per-layer
    KV-memory ablation. TTT-Linear and LaCT update fast weights too, but test with their own K."""
    return method.get("name", "gradmem") in ("gradmem", "kv_prefix")


def write_steps_to_test(spec: dict[str, Any], args: argparse.Namespace) -> list[int | None]:
    """The WRITE steps K to test with: --eval-steps for a method that writes by gradient descent,
    one test with the method's own setting for the others (RMT, full or no context)."""
    return args.eval_steps if writes_by_gradient_descent(spec["method"]) else [None]


def method_label(method: dict[str, Any]) -> str:
    """ "GradMem K = 2", "KV prefix P = 1 K = 2", "RMT x1", "full context": what the table's caption
    says was trained."""
    name = method.get("name", "gradmem")
    if writes_by_gradient_descent(method):
        label = "GradMem" if name == "gradmem" else f"KV prefix P = {method.get('num_memory', 1)}"
        steps = method.get("write", {}).get("steps")
        return label if steps is None else f"{label} K = {steps}"  # None: the method's default K
    if name == "rmt":
        return f"RMT x{method.get('steps', 1)}"
    return name.replace("_", " ")


def em_key(pairs: int, k: int | None, trained_pairs: int) -> str:
    """The row key of a test EM: `test_em_K<k>` at the trained number of pairs (older results read
    the same), `test_em_N<pairs>_K<k>` at another; without the `_K<k>` for a method without K."""
    steps = "" if k is None else f"_K{k}"
    return f"test_em{steps}" if pairs == trained_pairs else f"test_em_N{pairs}{steps}"


def summarise(name: str, spec: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    trained_pairs = stage_pairs(spec)[-1]
    tested = [(n, k) for n in args.test_pairs or [trained_pairs] for k in write_steps_to_test(spec, args)]
    chosen_column = any("chosen_write" in r for r in rows)
    header = (
        ["seed"]
        + [f"{n} pairs: min (steps)" for n in args.milestones]
        + [f"test EM {n} pairs" + ("" if k is None else f", K={k}") for n, k in tested]
        + ([f"test EM {trained_pairs} pairs, WRITE chosen on validation"] if chosen_column else [])
        + ["trained"]
    )
    table_rows = []
    for row in rows:
        cells = [row["seed"]]
        for n in args.milestones:
            hit = row["milestones"].get(n) or row["milestones"].get(str(n))
            cells.append(f"{hit['minutes']:.1f} ({hit['step']})" if hit else "not reached")
        keys = [em_key(n, k, trained_pairs) for n, k in tested]
        cells += [f"{100 * row[key]:.1f}" if key in row else "-" for key in keys]
        if chosen_column:
            chosen = row.get("chosen_write")
            cells.append(
                f"{100 * row['test_em_chosen']:.1f} (K={chosen['steps']}, lr {chosen['lr']:g})" if chosen else "-"
            )
        cells.append(f"{row['minutes']:.1f} min, {row['steps']} steps, last stage {row['final_stage_pairs']} pairs")
        table_rows.append(cells)
    summary_line = []
    for n in args.milestones:
        hits = [r["milestones"].get(n) or r["milestones"].get(str(n)) for r in rows]
        times = [h["minutes"] for h in hits if h]
        if times:
            mean, std = mean_std(times)
            summary_line.append(f"{n} pairs: reached in {len(times)}/{len(rows)} seeds, {mean:.1f} ± {std:.1f} min")
        else:
            summary_line.append(f"{n} pairs: reached in 0/{len(rows)} seeds")
    return (
        f"Time to {100 * args.target:.0f} % validation EM ({name}; {method_label(spec['method'])}; "
        f"test EM on {args.test_examples} held-out examples, test seed {args.test_seed}).\n\n"
        + markdown_table(header, table_rows)
        + "\n"
        + "; ".join(summary_line)
        + ".\n"
    )


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for row in rows:
        curve = row["curve"]
        (line,) = ax.plot(
            [m for m, _, _ in curve], [100 * e for _, _, e in curve], linewidth=1.0, label=f"seed {row['seed']}"
        )
        for i in range(1, len(curve)):  # mark each curriculum advance with its new number of pairs
            if curve[i][1] != curve[i - 1][1]:
                ax.annotate(str(curve[i][1]), (curve[i][0], 100 * curve[i][2]), fontsize=7, color=line.get_color())
    ax.set_xlabel("training minutes (evaluations included)")
    ax.set_ylabel("validation EM on the current stage, %")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The options and the config they name; every usage error before any training or scoring (a
    run can take hours)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="run spec with a curriculum over num_pairs")
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides, e.g. train.lr=0.002")
    parser.add_argument("--name", default=None, help="results name (default: the config's file name)")
    parser.add_argument("--seeds", type=int_list, default="0", help="comma-separated training seeds")
    parser.add_argument("--minutes", type=float, default=120.0, help="training budget per seed (train.max_minutes)")
    parser.add_argument("--milestones", type=int_list, default="4,8,16", help="numbers of pairs to time")
    parser.add_argument("--target", type=float, default=0.9, help="validation EM that counts as reached")
    parser.add_argument("--test-examples", type=positive_int, default=1000)
    parser.add_argument("--test-seed", type=int, default=1000)
    parser.add_argument(
        "--eval-steps", type=int_list, default="1,2", help="WRITE steps K at test time, comma-separated"
    )
    parser.add_argument(
        "--test-pairs",
        type=int_list,
        default=None,
        help="numbers of pairs to test the final model on (default: the last stage's)",
    )
    parser.add_argument(
        "--choose-steps",
        type=int_list,
        default=None,
        help="test-time K to choose from on the validation split, comma-separated (default: no choice)",
    )
    parser.add_argument(
        "--choose-lrs",
        type=float_list,
        default=None,
        help="inner lrs to choose from with --choose-steps (default: the trained one)",
    )
    parser.add_argument(
        "--valid-examples", type=positive_int, default=1000, help="validation examples for --choose-steps"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads per process")
    parser.add_argument(
        "--device", type=device_option, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    parser.add_argument("--report-only", action="store_true", help="rebuild the table and plot from the runs")
    parser.add_argument("--runs", default=None, help="run folders (default runs/time_to_accuracy/<name>)")
    parser.add_argument("--out", default=None, help="results folder (default results/time_to_accuracy)")
    args = parser.parse_args(argv)
    if any(k < 0 for k in args.choose_steps or []) or not all(lr > 0 for lr in args.choose_lrs or []):
        parser.error("--choose-steps must be >= 0 and --choose-lrs > 0")
    if any(k < 0 for k in args.eval_steps) or min([*args.milestones, *(args.test_pairs or [])], default=1) < 1:
        parser.error("--eval-steps must be >= 0, --milestones and --test-pairs >= 1")
    if not 0 < args.minutes < float("inf") or not 0 <= args.target <= 1:
        parser.error("--minutes must be a positive number and --target an exact-match fraction in [0, 1]")
    try:
        config = json.loads(Path(args.config).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        parser.error(f"cannot read --config {args.config}: {err}")
    return args, config


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(argv)
    torch.set_num_threads(args.threads)

    base = apply_overrides(config, args.set + [f"train.max_minutes={args.minutes}", f"train.device={args.device}"])
    name = args.name or Path(args.config).stem
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "time_to_accuracy" / name
    if not args.report_only:
        train_seeds(base, runs, args.seeds)
    found = sorted(int(p.name[1:]) for p in runs.glob("s*") if (p / "metrics.jsonl").exists())
    rows = [score_seed(apply_overrides(base, [f"train.seed={s}"]), runs / f"s{s}", args) for s in found]
    out = Path(args.out) if args.out else ROOT / "results" / "time_to_accuracy"
    table = summarise(name, base, rows, args)
    command = "python benchmarks/time_to_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    threads = "of this command (the runs trained under their own)" if args.report_only else "per run"
    save_results(
        out,
        name,
        {"name": name, "spec": base, "target": args.target, "seeds": rows},
        table + f"\nCommand: `{command}`; torch threads {threads}: {args.threads}.",
    )
    if rows:
        plot(out / f"{name}.png", rows, f"time to accuracy: {name}")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
