"""Data-parallel training: 2 CPU processes (gloo, DDP) end with the same parameters as one process
trained on the same global batches."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import kv_batch

from gradmem.run.build import build_model
from gradmem.training.distributed import DataParallel
from gradmem.training.trainer import Trainer

SPEC = {
    "task": {"name": "kv", "num_pairs": 2},
    "backbone": {
        "name": "llama",
        "hidden_size": 16,
        "num_layers": 2,
        "num_heads": 2,
        "intermediate_size": 32,
        "max_positions": 64,
    },
    "method": {"name": "gradmem", "num_memory": 3, "write": {"steps": 2, "grad_mode": "second"}},
    "train": {
        "steps": 3,
        "batch_size": 6,
        "lr": 0.01,
        "warmup_steps": 0,
        "eval_every": 100,
        "eval_examples": 6,
        "eval_batch_size": 6,
        "checkpoint_every": 100,
        "log_every": 1,
        "grad_clip": 0.5,
    },
}


def train(out_dir: Path, parallel: DataParallel | None = None, compiled: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    spec = {**SPEC, "train": {**SPEC["train"], "compile": compiled, "compile_backend": "eager"}}
    # float64: Adam divides by the gradient's RMS, which would amplify float32 reduction-order noise
    trainer = Trainer.from_spec(build_model(spec).double(), spec, out_dir, parallel=parallel)
    trainer.train()
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def _worker(rank: int, world: int, port: int, out_dir: str, compiled: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        params = train(Path(out_dir) / "ddp", DataParallel.from_process_group(), compiled)
        torch.save(params, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("compiled", [False, True], ids=["ddp", "compiled-step"])
def test_two_processes_match_one_process(tmp_path, compiled):
    # the compiled step bypasses DDP's backward hooks and averages the gradients itself
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), compiled), nprocs=2, join=True)
    single = train(tmp_path / "single")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)  # a parameter that did not move would make the comparison vacuous
    start = dict(build_model(SPEC).double().named_parameters())
    for name, ref in single.items():
        assert not torch.equal(ref, start[name].detach()), f"{name} did not train"
        for rank in ranks:
            torch.testing.assert_close(rank[name], ref, rtol=1e-9, atol=1e-12, msg=name)
    # only rank 0 writes the log and checkpoints
    assert (tmp_path / "ddp" / "metrics.jsonl").exists() and (tmp_path / "ddp" / "last").exists()


def test_shard_splits_evenly_and_refuses_uneven():
    batch = kv_batch(n=6, pairs=2)
    parts = [DataParallel(r, 3).shard(batch) for r in range(3)]
    assert [len(p) for p in parts] == [2, 2, 2]
    assert torch.equal(torch.cat([p.query.ids for p in parts]), batch.query.ids)
    assert torch.equal(torch.cat([p.target.lengths for p in parts]), batch.target.lengths)
    with pytest.raises(ValueError, match="evenly"):
        DataParallel(0, 4).shard(batch)
    with pytest.raises(ValueError):
        DataParallel(2, 2)
