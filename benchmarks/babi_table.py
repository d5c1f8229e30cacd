"""bAbI QA1-QA5 from scratch (the paper's Table 2 at our scale): train one method on one task or a mix
over seeds, then score exact match on held-out questions of every task it was trained on.

    python benchmarks/babi_table.py --config configs/babi_qa1_cpu.json --seeds 0,1,2 --name qa1_gradmem_k2
    python benchmarks/babi_table.py --config configs/babi_qa1_cpu.json --seeds 0 --name qa1_rmt \
        --set 'method={"name":"rmt","num_memory":8,"projection":"linear","steps":1}'
    python benchmarks/babi_table.py --config configs/babi_qa1_cpu.json --seeds 0,1,2 --name qa1_gradmem_k2 --report-only
    python benchmarks/babi_table.py --collect          # results/babi/table.{md,png} from every results/babi/*.json

Each seed trains in runs/babi/<name>/s<seed> under `train.max_minutes` (counted across resumes: an
interrupted seed continues where it stopped). Its best checkpoint (best validation EM on the last
curriculum stage) is scored on --test-examples questions per task (test split, --test-seed, the same
for every seed and method), teacher-forced EM of the answer word; GradMem also at each --eval-steps K.
Results: results/babi/<name>.{json,md}; `--collect` puts every result beside the paper's Table 2 row.
The stories are GENERATED bAbI-style (gradmem.tasks.babi), not the bAbI benchmark.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, percent, pyplot, save_results  # noqa: E402
from time_to_accuracy import train_seeds, writes_by_gradient_descent  # noqa: E402

from gradmem.cli.main import positive_int  # noqa: E402
from gradmem.cli.options import int_list  # noqa: E402
from gradmem.core.device import device_option  # noqa: E402
from gradmem.evaluation.evaluate import evaluate  # noqa: E402
from gradmem.run.build import build_task
from gradmem.run.checkpoint import load_checkpoint  # noqa: E402
from gradmem.run.overrides import apply_overrides
from gradmem.tasks.babi import BabiConfig, config_tasks  # noqa: E402
from gradmem.training.trainer import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = (1, 2, 3, 4, 5)
# The paper's Table 2 (GPT-2 base fine-tuned, m = 8, exact match %; ../shared/SPEC.md section 5):
# QA1, QA4 and QA5 are ~100 for every method; QA2 and QA3 are given per method.
PAPER = {
    "gradmem": {1: "~100", 2: "94.2", 3: "80.0", 4: "~100", 5: "~100"},
    "rmt": {1: "~100", 2: "93.9", 3: "87.9", 4: "~100", 5: "~100"},
}
PAPER_LABELS = {"gradmem": "GradMem m=8, K 1-2 (GPT-2 base)", "rmt": "RMT x1, m=8 (GPT-2 base)"}


def method_label(method: dict[str, Any]) -> str:
    name = method.get("name", "gradmem")
    if name == "gradmem":
        write = method.get("write", {})
        return f"GradMem m={method.get('num_memory', 8)}, K={write.get('steps', 1)}"
    if name in ("rmt", "armt"):
        return f"{name.upper()} x{method.get('steps', 1)}, m={method.get('num_memory', 8)}"
    return name.replace("_", " ")


def score_seed(spec: dict[str, Any], run: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One seed's row: training steps and minutes, then EM per task (and per K for GradMem)."""
    records = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
    evals = [r for r in records if r.get("kind") == "eval"]
    stages = len(spec["train"].get("curriculum") or [{}])
    row: dict[str, Any] = {
        "seed": spec["train"]["seed"],
        "steps": evals[-1]["step"] if evals else 0,
        "minutes": round(evals[-1]["elapsed_s"] / 60, 2) if evals else 0.0,
        "stage": evals[-1]["stage"] if evals else None,
        "stages": stages,
        "best_valid_em": max((r["exact_match"] for r in evals if r["stage"] == stages - 1), default=None),
        "em": {},
    }
    best = run / "best"
    if not (best / "spec.json").exists():
        return row
    model, _, _ = load_checkpoint(best, args.device)
    trained_k = spec["method"].get("write", {}).get("steps", 1)
    ks = (args.eval_steps or [trained_k]) if writes_by_gradient_descent(spec["method"]) else [None]
    for task_id in config_tasks(BabiConfig(task=spec["task"]["task"])):
        task = build_task({"task": {**spec["task"], "task": task_id}})
        test = task.make_split("test", args.test_examples, args.test_seed)
        for k in ks:
            key = f"QA{task_id}" + ("" if k is None or k == trained_k else f" K={k}")
            row["em"][key] = evaluate(model, test, 250, steps=k)["exact_match"]
    return row


def summarise(name: str, spec: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    keys = sorted({k for r in rows for k in r["em"]}, key=lambda k: (len(k) > 3, k))
    header = ["seed", *keys, "steps", "minutes", "stage reached"]
    body = [
        [r["seed"], *(f"{100 * r['em'][k]:.1f}" if k in r["em"] else "-" for k in keys), r["steps"], r["minutes"],
         f"{(r['stage'] or 0) + 1}/{r['stages']}"]
        for r in rows
    ]  # fmt: skip
    if len(rows) > 1:
        body.append(["mean", *(percent([r["em"][k] for r in rows if k in r["em"]]) for k in keys), "", "", ""])
    return f"## {name}: {method_label(spec['method'])}\n\n" + markdown_table(header, body)


def read_results(out: Path) -> dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """Every scored result in `out`: its stem -> (method label, seeds with scores, spec)."""
    found = {}
    for path in sorted(out.glob("*.json")):
        result = json.loads(path.read_text())
        if "seeds" not in result:
            continue  # another benchmark's file in the folder (babi_errors.py)
        rows = [r for r in result["seeds"] if r["em"]]
        if rows:
            found[path.stem] = (method_label(result["spec"]["method"]), rows, result["spec"])
    return found


def plot_results(path: Path, results: dict[str, tuple[str, list[dict[str, Any]], dict[str, Any]]]) -> None:
    """Every result as a point per task (the mean of its seeds; each seed a small dot), one colour per
    method, the paper's numbers as black dashes; the table names which run each point is."""
    plt = pyplot()
    methods = sorted({label for label, _, _ in results.values()})
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.7 / max(len(methods), 1)
    for i, method in enumerate(methods):
        offset = (i - (len(methods) - 1) / 2) * width
        xs, means = [], []
        for label, rows, _ in results.values():
            for t in TASKS:
                ems = [100 * r["em"][f"QA{t}"] for r in rows if f"QA{t}" in r["em"]]
                if label != method or not ems:
                    continue
                xs.append(t + offset)
                means.append(sum(ems) / len(ems))
                if len(ems) > 1:
                    ax.scatter([t + offset] * len(ems), ems, s=8, color=f"C{i}", alpha=0.5)
        ax.scatter(xs, means, s=36, color=f"C{i}", label=method, edgecolors="black", linewidths=0.4)
    for t in TASKS:
        cells = {row[t] for row in PAPER.values()}
        for cell in cells:
            y = 100.0 if cell.startswith("~") else float(cell)
            ax.plot([t - 0.4, t + 0.4], [y, y], color="black", linestyle="--", linewidth=0.8)
    ax.plot([], [], color="black", linestyle="--", linewidth=0.8, label="paper (GPT-2 base)")
    ax.set_xticks(list(TASKS), [f"QA{t}" for t in TASKS])
    ax.set_ylabel("exact match %, 1000 test questions")
    ax.set_ylim(0, 104)
    ax.set_title("bAbI from memory: generated stories, from scratch on one CPU core (every result)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def collect(out: Path) -> str:
    """Every result in `out` as one table, one row per result (mean over its seeds), beside the paper;
    the same results plotted in `out`/table.png."""
    header = ["method", "trained on", *(f"QA{t}" for t in TASKS), "seeds", "minutes per seed", "result"]
    body = []
    results = read_results(out)
    if results:
        plot_results(out / "table.png", results)
    for stem, (label, rows, spec) in results.items():
        cells = [percent([r["em"][f"QA{t}"] for r in rows]) if f"QA{t}" in rows[0]["em"] else "" for t in TASKS]
        trained = "+".join(f"QA{t}" for t in config_tasks(BabiConfig(task=spec["task"]["task"])))
        minutes = "/".join(f"{r['minutes']:.0f}" for r in rows)
        body.append([label, trained, *cells, len(rows), minutes, stem])
    for method, row in PAPER.items():
        body.append(
            [
                f"paper: {PAPER_LABELS[method]}",
                "each",
                *row.values(),
                3,
                "",
                "",
            ]
        )
    return (
        "# bAbI from memory, generated bAbI-style stories (exact match %, 1000 test questions per task)\n\n"
        + markdown_table(header, body)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="bAbI run spec (one task or a mix)")
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides, e.g. method.write.steps=1")
    parser.add_argument("--name", default=None, help="results name (default: the config's file name)")
    parser.add_argument("--seeds", type=int_list, default="0", help="comma-separated training seeds")
    parser.add_argument("--minutes", type=float, default=120.0, help="training budget per seed (train.max_minutes)")
    parser.add_argument("--test-examples", type=positive_int, default=1000, help="test questions per task")
    parser.add_argument("--test-seed", type=int, default=1000)
    parser.add_argument(
        "--eval-steps", type=int_list, default=None, help="GradMem WRITE steps K to test (default: the trained K)"
    )
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads per process")
    parser.add_argument(
        "--device", type=device_option, default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N"
    )
    parser.add_argument("--report-only", action="store_true", help="score the runs there are, train nothing")
    parser.add_argument("--collect", action="store_true", help="write results/babi/table.{md,png} from every result")
    parser.add_argument("--runs", default=None, help="run folders (default runs/babi/<name>)")
    parser.add_argument("--out", default=None, help="results folder (default results/babi)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "results" / "babi"
    if args.collect:
        out.mkdir(parents=True, exist_ok=True)
        table = collect(out)
        (out / "table.md").write_text(table)
        print(table)
        return 0
    if not args.config:
        parser.error("--config is required (or --collect)")
    if not 0 < args.minutes < float("inf") or any(k < 0 for k in args.eval_steps or []):
        parser.error("--minutes must be a positive number and --eval-steps >= 0")
    try:
        config = json.loads(Path(args.config).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        parser.error(f"cannot read --config {args.config}: {err}")
    if config.get("task", {}).get("name") != "babi":
        parser.error(f'--config {args.config} is not a bAbI run spec (task.name must be "babi")')
    torch.set_num_threads(args.threads)

    base = apply_overrides(config, args.set + [f"train.max_minutes={args.minutes}", f"train.device={args.device}"])
    name = args.name or Path(args.config).stem
    runs = Path(args.runs) if args.runs else ROOT / "runs" / "babi" / name
    if not args.report_only:
        train_seeds(base, runs, args.seeds)
    found = sorted(int(p.name[1:]) for p in runs.glob("s*") if (p / "metrics.jsonl").exists())
    rows = [score_seed(apply_overrides(base, [f"train.seed={s}"]), runs / f"s{s}", args) for s in found]
    command = "python benchmarks/babi_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = summarise(name, base, rows) + f"\nCommand: `{command}`\n"
    save_results(out, name, {"name": name, "spec": base, "seeds": rows}, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
