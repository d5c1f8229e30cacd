"""The README demo: meta-train GradMem on key-value retrieval on CPU, then compare with the same
model given no context. Prints a table and writes runs/demo/demo.json (+ .png).

    python scripts/demo.py [--config configs/kv_demo.json] [--out runs/demo] [--set train.steps=...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gradmem(*args: str) -> list[dict]:
    """Run the gradmem CLI (so the demo exercises exactly what users run) and parse its JSON lines."""
    proc = subprocess.run([sys.executable, "-m", "gradmem.cli", *args], check=True, stdout=subprocess.PIPE, text=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def scored(run: str) -> str:
    """The checkpoint to score: `best/` (the last curriculum stage's best), else `last/` when the
    run ended before reaching its last stage (a shortened run)."""
    return f"{run}/best" if (Path(run) / "best" / "spec.json").exists() else f"{run}/last"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "kv_demo.json"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    parser.add_argument(
        "--results",
        default=str(ROOT / "runs" / "demo" / "demo.json"),
        help="where the table goes (results/demo.json is the published run's)",
    )
    parser.add_argument("--test-examples", type=int, default=1000)
    parser.add_argument("--baseline-steps", type=int, default=600)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the GradMem run")
    args = parser.parse_args()
    spec = json.loads(Path(args.config).read_text())
    rows = []

    started = time.time()
    gradmem("train", "--config", args.config, "--out", f"{args.out}/gradmem", "--set", *args.set)
    train_s = time.time() - started
    test = gradmem("eval", scored(f"{args.out}/gradmem"), "--examples", str(args.test_examples), "--generate")[-1]
    rows.append({"method": "gradmem", "train_s": round(train_s, 1), **test})

    # The same backbone and training budget in steps, but READ sees only the query.
    started = time.time()
    gradmem(
        "train",
        "--config",
        args.config,
        "--out",
        f"{args.out}/no_context",
        "--set",
        'method={"name": "no_context"}',
        "train.curriculum=[]",
        "train.target_exact_match=null",
        f"train.steps={args.baseline_steps}",
    )
    train_s = time.time() - started
    test = gradmem("eval", scored(f"{args.out}/no_context"), "--examples", str(args.test_examples), "--generate")[-1]
    rows.append({"method": "no_context", "train_s": round(train_s, 1), **test})

    pairs = spec["task"]["num_pairs"]
    print(f"\nkey-value retrieval, {pairs} pairs, held-out test set of {args.test_examples} examples")
    print(f"{'method':<12} {'EM (teacher forced)':>20} {'EM (generated)':>15} {'train s':>8}")
    for r in rows:
        print(f"{r['method']:<12} {r['exact_match']:>20.3f} {r['generated_exact_match']:>15.3f} {r['train_s']:>8.0f}")
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"config": spec, "overrides": args.set, "rows": rows}, indent=2))
    plot_curve(Path(args.out) / "gradmem" / "metrics.jsonl", results.with_suffix(".png"))
    print(f"wrote {results} and {results.with_suffix('.png')}")


def plot_curve(metrics: Path, png: Path) -> None:
    """Held-out EM and WRITE loss over training, curriculum stages marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["kind"] == "eval"]
    steps = [r["step"] for r in evals]
    fig, (ax_em, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_em.plot(steps, [r["exact_match"] for r in evals], marker="o", ms=3)
    for prev, cur in zip(evals, evals[1:]):
        if cur["stage"] != prev["stage"]:
            ax_em.axvline(cur["step"], color="grey", ls=":", lw=1)
    ax_em.set(
        xlabel="training step",
        ylabel="held-out exact match",
        ylim=(0, 1.02),
        title="EM on the current curriculum stage (dotted: next stage)",
    )
    for k in range(len(evals[0]["write_loss"])):
        ax_loss.plot(steps, [r["write_loss"][k] for r in evals], label=f"before write step {k + 1}")
    ax_loss.set(xlabel="training step", ylabel="reconstruction loss", title="WRITE loss")
    ax_loss.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main()
