"""scripts/gpu_run.py, the one prepared GPU call, run here on the CPU at toy size so it cannot rot
before a GPU is lent: every part runs, its results and the checkpoint come back in the files the GPU
machine can return (at most 8, none deeper than two folders)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gradmem.run.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_script_runs_every_part_on_the_cpu_from_a_plain_checkout(tmp_path):
    out = tmp_path / "gpu"
    # as on the GPU machine: a plain checkout on the path, no reliance on the installed package
    done = subprocess.run(
        [sys.executable, "scripts/gpu_run.py", "--out", str(out), "--minutes", "0.6", "--device", "cpu", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu_run.json").read_text())
    assert report["device"] == "cpu" and report["tiny"]
    parts = report["parts"]
    assert [parts[p]["status"] for p in ("cuda tests", "throughput", "training")] == ["passed"] * 3
    assert "passed" in parts["cuda tests"]["summary"]
    assert set(parts["throughput"]["train_step_vs_hf_eager"]) == {"hf_eager", "builtin"}
    training = parts["training"]
    assert training["steps"] > 0 and set(training["test_exact_match_at_trained_k"]) == {"1 pairs", "2 pairs"}
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert len(files) <= 8 and all(f.count("/") <= 1 for f in files), files
    assert "gpu_run.md" in files and "metrics.jsonl" in files
    model, _, spec = load_checkpoint(out / "checkpoint")
    assert spec["train"]["device"] == "cpu" and sum(p.numel() for p in model.parameters()) > 0


def test_the_gpu_script_refuses_a_device_it_cannot_use(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/gpu_run.py", "--out", str(tmp_path), "--device", "tpu"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "unknown device" in done.stderr
