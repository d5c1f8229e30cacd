"""Attention kernels under GradMem's second-order pattern: `sdpa_explicit` and `sdpa_hvp` vs plain `math`.

One measured step = forward, the inner gradient with create_graph (what a WRITE step does), then
the outer backward through that gradient (what meta-training does). Also timed: forward alone
without grad (WRITE at evaluation / READ), and first order (forward + backward). Variants run
interleaved per round; ratios are per round, medians reported.

    python benchmarks/attention.py                      # T = 128, 512, 1024 on CPU, fp32
    python benchmarks/attention.py --device cuda --dtype bf16 --batch 16
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfkit import DTYPES, add_run_options, apply_threads, interleaved, peak_bytes, ratios, summary  # noqa: E402
from report import save_results  # noqa: E402

from gradmem.cli.options import int_list  # noqa: E402
from gradmem.core.attention import get_attention  # noqa: E402

KERNELS = ("math", "sdpa_explicit", "sdpa_hvp")  # the first is the reference


def second_order(
    fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        out = fn(q, k, v)
        grads = torch.autograd.grad((out * w).sum(), (q, k, v), create_graph=True)
        sum((g * g).sum() for g in grads).backward()

    return run


def first_order(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        (fn(q, k, v) * w).sum().backward()

    return run


def forward_only(
    fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            fn(q, k, v)

    return run


MODES = {"second_order": second_order, "first_order": first_order, "forward": forward_only}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(p)
    p.add_argument("--lengths", type=int_list, default="128,512,1024")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    apply_threads(args)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    report: dict[str, Any] = {
        "setting": {**vars(args), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": [],
    }
    gen = torch.Generator(device="cpu").manual_seed(0)
    for length in args.lengths:
        shape = (args.batch, args.heads, length, args.head_dim)
        q, k, v, w = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        for mode, make in MODES.items():
            row = measure({name: make(get_attention(name), q, k, v, w) for name in KERNELS}, args.rounds, device)
            report["results"].append({"length": length, "mode": mode, **row})
            print(f"T={length:5d} {mode:12s} " + summary_line(row), flush=True)
            q.grad = k.grad = v.grad = None
    lines = table(report)
    save_results(Path(args.out), "attention" + (f"_{args.tag}" if args.tag else ""), report, "\n".join(lines))
    print("\n".join(lines))


def measure(calls: dict[str, Callable[[], None]], rounds: int, device: torch.device) -> dict[str, Any]:
    """Each kernel's peak memory (after a warm-up call), interleaved timings and speed-up over the first."""
    row: dict[str, Any] = {}
    for name, fn in calls.items():
        fn()  # warm-up
        row[f"{name}_peak_bytes"] = peak_bytes(fn, device)
    times = interleaved(calls, rounds, device)
    for name in KERNELS:
        row[f"{name}_seconds"] = summary(times[name])
    for name in KERNELS[1:]:
        row[f"{name}_speedup"] = ratios(times, KERNELS[0], name)
    return row


def summary_line(row: dict[str, Any]) -> str:
    return ", ".join(
        f"{name} {row[name + '_seconds']['median'] * 1e3:.1f} ms {row[name + '_peak_bytes'] / 2**20:.0f} MiB"
        + (f" ({row[name + '_speedup']['median']:.2f}x)" if name != KERNELS[0] else "")
        for name in KERNELS
    )


def table(report: dict[str, Any]) -> list[str]:
    """The report as a Markdown table, with the setting above it."""
    s = report["setting"]
    lines = [
        f"Batch {s['batch']}, {s['heads']} heads, head dim {s['head_dim']}, {s['dtype']}, {s['device']}, "
        f"{s['threads']} threads, {s['rounds']} interleaved rounds; speed-up = {KERNELS[0]} time / kernel time, "
        "per round (median, min-max).",
        "",
        "| T | mode | "
        + " | ".join(f"{n} ms" for n in KERNELS)
        + " | "
        + " | ".join(f"{n} speed-up" for n in KERNELS[1:])
        + " | "
        + " | ".join(f"{n} peak MiB" for n in KERNELS)
        + " |",
        "|---|---|" + "---|" * (3 * len(KERNELS) - 1),
    ]
    for r in report["results"]:
        cells = [f"{r[n + '_seconds']['median'] * 1e3:.1f}" for n in KERNELS]
        cells += [
            f"{r[n + '_speedup']['median']:.2f}x ({r[n + '_speedup']['min']:.2f}-{r[n + '_speedup']['max']:.2f})"
            for n in KERNELS[1:]
        ]
        cells += [f"{r[n + '_peak_bytes'] / 2**20:.0f}" for n in KERNELS]
        lines.append(f"| {r['length']} | {r['mode']} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
