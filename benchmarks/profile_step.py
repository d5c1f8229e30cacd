"""Where a second-order meta-training step spends its time: torch.profiler tables, built-in vs HF.

    python benchmarks/profile_step.py --batch 16 --threads 1     # -> results/perf/profile.md
    python benchmarks/profile_step.py --variants builtin_compiled,hf_eager --batch 64 --threads 1 \
        --out results/perf/profile_compiled.md

Same model and sizes as benchmarks/throughput.py (paper KV setting by default); one warm-up step,
then one profiled step per variant. Ops are grouped into GEMMs (mm/bmm/baddbmm/addmm/SDPA) and the
rest (elementwise, reductions, copies), which is what separates the two implementations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import ROOT, VARIANTS, build_models, calls  # noqa: E402

from gradmem.core.batch import collate  # noqa: E402
from gradmem.tasks.kv import KVTask  # noqa: E402

GEMM = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="builtin,hf_eager")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--out", default=str(ROOT / "results" / "perf" / "profile.md"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.variants.split(",")
    setting = argparse.Namespace(
        pretrained="", seed=0, width=128, layers=4, heads=4, intermediate=512, memory=8, steps=2, grad_mode="second"
    )
    models = build_models(setting, names, torch.device("cpu"), torch.float32)
    batch = collate(KVTask(num_pairs=16).make_split("train", args.batch, seed=0))
    lines = [
        f"Profile of one second-order training step (paper KV setting, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, CPU fp32). Command: `python benchmarks/profile_step.py "
        f"--variants {args.variants} --batch {args.batch} --threads {args.threads} --out {args.out}`. "
        "In compiled variants the fused element-wise kernels run inside the `CompiledFxGraph` rows.",
        "",
    ]
    for name in names:
        step = calls(models[name], batch, VARIANTS[name][2])["train"]
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM)
        lines += [
            f"## {name} ({VARIANTS[name][0]}, attention {VARIANTS[name][1]})",
            "",
            f"Self CPU total {total / 1e6:.2f} s; GEMMs {gemm / total:.0%}, everything else {1 - gemm / total:.0%}.",
            "",
            "```",
            events.table(sort_by="self_cpu_time_total", row_limit=args.rows),
            "```",
            "",
        ]
        print("\n".join(lines[-6:]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
