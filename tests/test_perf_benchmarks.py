"""The performance benchmarks run end to end on tiny sizes, and their measuring tools are right."""

from __future__ import annotations

import json
import sys

import torch
from conftest import benchmarks_on_path

with benchmarks_on_path():
    import attention
    import perfkit
    import precision
    import reconstruction_cache
    import throughput


def test_peak_bytes_counts_live_tensors():
    device = torch.device("cpu")

    def two_live_then_one():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float32)  # 2000 bytes, both alive: 6000
        del a, b
        torch.empty(250, dtype=torch.float32)  # 1000 bytes after both were freed

    assert perfkit.peak_bytes(two_live_then_one, device) == 6000


def test_count_flops_of_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert perfkit.count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_throughput_and_attention_benchmarks_run(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "throughput.py",
            "--batch",
            "2",
            "--pairs",
            "1",
            "--memory",
            "2",
            "--layers",
            "1",
            "--heads",
            "2",
            "--width",
            "16",
            "--intermediate",
            "32",
            "--rounds",
            "1",
            "--variants",
            "builtin,hf_eager",
            "--out",
            str(tmp_path),
            "--tag",
            "t",
        ],
    )
    throughput.main()
    report = json.loads((tmp_path / "throughput_t.json").read_text())
    assert set(report["variants"]) == {"builtin", "hf_eager"}
    flops = {name: v["train"]["flops"] for name, v in report["variants"].items()}
    assert flops["builtin"] == flops["hf_eager"] > 0  # same sizes, same work
    assert report["variants"]["hf_eager"]["train"]["ratio_vs_baseline"]["median"] == 1.0
    assert (tmp_path / "throughput_t.md").read_text().count("| builtin") == 3

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "attention.py",
            "--lengths",
            "8,16",
            "--batch",
            "1",
            "--heads",
            "2",
            "--head-dim",
            "4",
            "--rounds",
            "2",
            "--out",
            str(tmp_path),
            "--tag",
            "t",
        ],
    )
    attention.main()
    rows = json.loads((tmp_path / "attention_t.json").read_text())["results"]
    assert [(r["length"], r["mode"]) for r in rows][:3] == [(8, "second_order"), (8, "first_order"), (8, "forward")]


def test_precision_benchmark_times_both_precisions_on_the_same_weights(tmp_path, capsys):
    tiny = ["backbone.num_layers=1", "backbone.hidden_size=16", "backbone.intermediate_size=32", "train.batch_size=4"]
    argv = ["--set", *tiny, "--rounds", "2", "--stage", "0", "--out", str(tmp_path), "--tag", "t"]
    assert precision.main(argv) == 0
    result = json.loads((tmp_path / "precision_t.json").read_text())
    assert set(result["seconds"]) == {"fp32", "bf16"} and result["seconds"]["fp32"]["n"] == 2
    assert result["batch_size"] == 4 and result["cpu"] and isinstance(result["auto_chooses_bf16"], bool)
    assert "bf16" in (tmp_path / "precision_t.md").read_text() and "Command:" in capsys.readouterr().out


def test_the_reconstruction_cache_benchmark_decodes_the_same_tokens_both_ways(tmp_path):
    from conftest import tiny_model

    from gradmem.serve.engine import Engine, EngineConfig
    from gradmem.serve.store import MemoryStore
    from gradmem.tasks.tokenizers import CharTokenizer

    engine = Engine(tiny_model(), CharTokenizer.for_kv(62), MemoryStore(tmp_path), EngineConfig(chunk_tokens=40))
    (row,) = reconstruction_cache.compare(engine, [6], rounds=2)
    assert row["same_tokens"] and row["blocks"] == -(-row["context_tokens"] // 40)
    assert row["positions"]["cached"] == row["blocks"] * (3 + 40 - 1)  # m = 3, every block decodes 40 tokens
    assert row["seconds"]["cached"]["n"] == row["seconds"]["uncached"]["n"] == 2
    assert "| 6 |" in reconstruction_cache.table([row])
