"""Test-time write steps (paper Table 3): score trained checkpoints with K_eval = 0..10 (and more)
WRITE steps on one fixed held-out set, without retraining.

    python benchmarks/write_steps.py runs/capacity/cpu/gradmem_k2_N4_s0/best
    python benchmarks/write_steps.py "K=1=runs/a/best" "K=2=runs/b/best" --k-eval 0,1,2,5,10,20 --out results/write_steps/x

Each checkpoint (optionally `label=path`) is evaluated at every K_eval on its own task's test split
(`--examples`, `--test-seed`); results go to `<out>/results.json`, `table.md` and `heatmap.png`
(rows: checkpoints, columns: K_eval). A method without write steps (full / no context) is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import markdown_table, plot_heatmap  # noqa: E402

from gradmem.core.device import device_option
from gradmem.evaluation.evaluate import evaluate  # noqa: E402
from gradmem.run.checkpoint import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_K = "0,1,2,3,4,5,6,7,8,9,10,15,20"


def parse_checkpoint(arg: str) -> tuple[str, Path]:
    """'label=path' or 'path' (the label is then the run folder's name)."""
    label, sep, path = arg.rpartition("=")
    if not sep:
        path = arg
        label = Path(arg).parent.name if Path(arg).name in ("best", "last") else Path(arg).name
    return label, Path(path)


def sweep(
    checkpoint: Path, k_eval: list[int], examples: int, test_seed: int, device: str, batch_size: int, lr: float | None
) -> dict:
    """Exact match of one checkpoint at each K_eval."""
    model, task, spec = load_checkpoint(checkpoint, device)
    trained_k = spec["method"].get("write", {}).get("steps", spec["method"].get("steps"))
    if trained_k is None:
        raise SystemExit(f"{checkpoint}: method {spec['method']['name']!r} has no write steps to vary")
    test = task.make_split("test", examples, test_seed)
    rows = []
    for k in k_eval:
        started = time.time()
        result = evaluate(model, test, batch_size, steps=k, lr=lr, pad_id=task.tokenizer.pad_id)
        rows.append(
            {
                "k_eval": k,
                "exact_match": result["exact_match"],
                "token_accuracy": result["token_accuracy"],
                "write_loss": result["write_loss"],
                "seconds": round(time.time() - started, 2),
            }
        )
        print(f"{checkpoint}: K_eval={k} EM {result['exact_match']:.3f}", file=sys.stderr, flush=True)
    return {
        "checkpoint": str(checkpoint),
        "method": spec["method"]["name"],
        "trained_k": trained_k,
        "pairs": task.config.num_pairs,
        "test_examples": examples,
        "test_seed": test_seed,
        "lr": lr,
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders, optionally label=path")
    parser.add_argument("--k-eval", default=DEFAULT_K, help="comma-separated WRITE steps at evaluation")
    parser.add_argument("--examples", type=int, default=1000, help="held-out test examples")
    parser.add_argument(
        "--test-seed", type=int, default=1000, help="seed of the test split (the capacity presets' test_seed)"
    )
    parser.add_argument("--lr", type=float, default=None, help="inner lr at evaluation (default: trained)")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--device", type=device_option, default="auto", help="auto (CUDA when available), cpu, cuda:N")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "write_steps"), help="results folder")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k_eval = [int(k) for k in args.k_eval.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {}
    for arg in args.checkpoints:
        label, path = parse_checkpoint(arg)
        runs[label] = sweep(path, k_eval, args.examples, args.test_seed, args.device, args.batch_size, args.lr)
    header = ["checkpoint", "trained K", "pairs"] + [f"K={k}" for k in k_eval]
    rows = [
        [label, r["trained_k"], r["pairs"]] + [f"{100 * x['exact_match']:.1f}" for x in r["results"]]
        for label, r in runs.items()
    ]
    (out / "table.md").write_text(
        f"Exact match % at K_eval write steps ({args.examples} held-out examples, "
        f"test seed {args.test_seed}); models trained with `trained K`.\n\n" + markdown_table(header, rows)
    )
    (out / "results.json").write_text(json.dumps({"k_eval": k_eval, "runs": runs}, indent=2))
    plot_heatmap(
        out / "heatmap.png",
        list(runs),
        [str(k) for k in k_eval],
        [[x["exact_match"] for x in r["results"]] for r in runs.values()],
        "test-time write steps",
        "K_eval (write steps at evaluation)",
        "checkpoint",
    )
    print((out / "table.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
