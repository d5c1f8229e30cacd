"""Data-parallel GradMem training under torchrun (or `accelerate launch`, which sets the same variables).

    torchrun --standalone --nproc_per_node 8 scripts/train_ddp.py --config configs/kv_demo.json --out runs/kv_ddp
    torchrun --standalone --nproc_per_node 2 scripts/train_ddp.py --config configs/kv_demo.json --out runs/kv_cpu --device cpu

`train.batch_size` is the GLOBAL batch: each of the N processes trains on its 1/N slice and DDP
averages gradients, which equals single-process training on the whole batch (tests/test_distributed.py).
Rank 0 writes metrics.jsonl and the checkpoints; `--set` overrides work as in `gradmem train`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist

from gradmem.run.overrides import apply_overrides
from gradmem.run.spec import read_spec
from gradmem.training.distributed import DataParallel
from gradmem.training.start import start_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run spec JSON (task, backbone, method, train)")
    p.add_argument("--out", required=True, help="run folder (written by rank 0)")
    p.add_argument("--set", nargs="*", default=[], help="overrides section.key=value")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if args.device == "cuda" else torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        spec = apply_overrides(read_spec(args.config), args.set)
        parallel = DataParallel.from_process_group(device)
        # every rank seeds alike in start_run, so all start from the same initial weights
        trainer = start_run(spec, args.out, args.resume, device=device, parallel=parallel).trainer
        started = time.time()
        final = trainer.train()
        if parallel.is_main:
            print(
                json.dumps(
                    {
                        "step": trainer.step,
                        "exact_match": final.get("exact_match"),
                        "processes": parallel.world_size,
                        "seconds": round(time.time() - started, 1),
                        "out": args.out,
                    }
                )
            )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
