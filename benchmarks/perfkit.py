"""Shared measuring tools for the performance benchmarks: timing with device sync, peak tensor
memory of one call on any device, FLOPs from PyTorch's counter, and a measured matmul peak.

Benchmarks here compare variants *interleaved* in one process (round r runs every variant once, in
a rotated order), so the reported numbers are ratios taken side by side, robust to a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from gradmem.core.device import device_option

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
RESULTS = Path(__file__).resolve().parent.parent / "results" / "perf"


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options every timing benchmark takes: where it runs, how often, where results go."""
    parser.add_argument("--device", type=device_option, default="auto", help="auto (CUDA when available), cpu, cuda:N")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", default=str(RESULTS))


def apply_threads(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of `fn` takes (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages created inside the mode and still alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensors allocated during one call of `fn` (weights and inputs made before excluded).
    CUDA: the allocator's peak above the starting level; elsewhere: live storages tracked per op."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with _LiveTensorBytes() as tracker:
        fn()
    return tracker.peak


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn` as counted by torch.utils.flop_counter (matmuls and attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(size: tuple[int, int, int], dtype: torch.dtype, device: torch.device, repeats: int = 10) -> float:
    """Achieved GFLOP/s of an (m x k) @ (k x n) matmul (best of `repeats`): the machine's peak here."""
    m, k, n = size
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * m * k * n / best / 1e9


def summary(values: list[float]) -> dict[str, float]:
    """Median, min, max and relative spread ((max - min) / median) of repeated measurements."""
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread": (max(values) - min(values)) / med if med else 0.0,
        "n": len(values),
    }


def interleaved(variants: dict[str, Callable[[], Any]], rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Run every variant once per round, rotating the order each round; seconds per call."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(timed(variants[name], device))
    return times


def ratios(times: dict[str, list[float]], slow: str, fast: str) -> dict[str, float]:
    """Per-round speed-up slow/fast (same round = measured side by side), summarised."""
    return summary([a / b for a, b in zip(times[slow], times[fast])])
