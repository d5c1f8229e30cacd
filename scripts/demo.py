"""The README demo: meta-train GradMem on key-value retrieval on CPU, then compare with the same
model given no context. Prints a table and writes results/demo.json.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "kv_demo.json"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--results", default=str(ROOT / "results" / "demo.json"))
    parser.add_argument("--test-examples", type=int, default=1000)
    parser.add_argument("--baseline-steps", type=int, default=600)
    parser.add_argument("--set", nargs="*", default=[], help="overrides for the GradMem run")
    args = parser.parse_args()
    spec = json.loads(Path(args.config).read_text())
    rows = []

    started = time.time()
    gradmem("train", "--config", args.config, "--out", f"{args.out}/gradmem", "--set", *args.set)
    train_s = time.time() - started
    test = gradmem("eval", f"{args.out}/gradmem/best", "--examples", str(args.test_examples), "--generate")[-1]
    rows.append({"method": "gradmem", "train_s": round(train_s, 1), **test})

    # The same backbone and training budget in steps, but READ sees only the query.
    started = time.time()
    gradmem("train", "--config", args.config, "--out", f"{args.out}/no_context",
            "--set", 'method={"name": "no_context"}', "train.curriculum=[]", "train.target_exact_match=null",
            f"train.steps={args.baseline_steps}")
    train_s = time.time() - started
    test = gradmem("eval", f"{args.out}/no_context/best", "--examples", str(args.test_examples), "--generate")[-1]
    rows.append({"method": "no_context", "train_s": round(train_s, 1), **test})

    pairs = spec["task"]["num_pairs"]
    print(f"\nkey-value retrieval, {pairs} pairs, held-out test set of {args.test_examples} examples")
    print(f"{'method':<12} {'EM (teacher forced)':>20} {'EM (generated)':>15} {'train s':>8}")
    for r in rows:
        print(f"{r['method']:<12} {r['exact_match']:>20.3f} {r['generated_exact_match']:>15.3f} {r['train_s']:>8.0f}")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"config": spec, "overrides": args.set, "rows": rows}, indent=2))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
