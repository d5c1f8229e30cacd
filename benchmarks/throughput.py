"""Throughput of GradMem meta-training, WRITE and READ: built-in decoder vs Hugging Face Llama.

Both backbones have identical sizes and weights (the HF model is converted from the built-in one,
gradmem.backbones.convert) and identical GradMem parts (M0, projection, WRITE head). Every round
runs each variant once in a rotated order, so ratios are measured side by side:

    python benchmarks/throughput.py                                   # paper KV setting, CPU, fp32
    python benchmarks/throughput.py --rounds 3 --batch 16 --tag quick # smaller, for a busy machine
    python benchmarks/throughput.py --device cuda --dtype bf16        # unchanged on a GPU

Measured per variant: training step (WRITE with K second-order steps + READ + backward + AdamW),
WRITE alone (no graph, K steps), READ alone (no grad) — median seconds and examples/s; peak tensor
memory of each; FLOPs from torch.utils.flop_counter and achieved GFLOP/s; fraction of a matmul
peak measured in the same run. Writes results/perf/throughput[_tag].json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfkit import (  # noqa: E402
    DTYPES,
    add_run_options,
    apply_threads,
    count_flops,
    interleaved,
    matmul_gflops,
    peak_bytes,
    ratios,
    summary,
)

from gradmem.backbones import LlamaBackbone, LlamaConfig  # noqa: E402
from gradmem.backbones.adapted import AdaptedBackbone, BackboneOptions  # noqa: E402
from gradmem.backbones.convert import to_hf  # noqa: E402
from gradmem.backbones.hf import HFBackbone  # noqa: E402
from gradmem.backbones.pretrained import resolve_model_path  # noqa: E402
from gradmem.core.attention import HF_ATTENTION_NAME, HF_HVP_ATTENTION_NAME  # noqa: E402
from gradmem.core.batch import collate  # noqa: E402
from gradmem.methods import build_method  # noqa: E402
from gradmem.methods.model import MemoryModel  # noqa: E402
from gradmem.tasks.kv import KVTask  # noqa: E402
from gradmem.training.compiled import CompiledStep  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# variant name -> (backbone family, attention kernel, training step compiled by gradmem.training.compiled,
# backbone option bf16: GEMMs under bfloat16 autocast, weights and memory fp32)
VARIANTS = {
    "builtin": ("builtin", "math", False, False),
    "builtin_sdpa_explicit": ("builtin", "sdpa_explicit", False, False),
    "builtin_sdpa_hvp": ("builtin", "sdpa_hvp", False, False),
    "builtin_compiled": ("builtin", "math", True, False),
    "builtin_sdpa_hvp_compiled": ("builtin", "sdpa_hvp", True, False),
    "builtin_bf16": ("builtin", "math", False, True),
    "builtin_compiled_bf16": ("builtin", "math", True, True),
    "hf_eager": ("hf", "eager", False, False),
    "hf_eager_bf16": ("hf", "eager", False, True),
    "hf_compiled": ("hf", "eager", True, False),
    "hf_sdpa_explicit": ("hf", HF_ATTENTION_NAME, False, False),
    "hf_sdpa_hvp": ("hf", HF_HVP_ATTENTION_NAME, False, False),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_options(p)
    p.add_argument("--variants", default="builtin,hf_eager", help=f"comma list of {sorted(VARIANTS)}")
    p.add_argument("--baseline", default="hf_eager", help="variant the others are compared with")
    p.add_argument(
        "--pretrained",
        default="",
        help="a packaged or local HF model (e.g. smollm2-135m): only hf_* "
        "variants, sizes from the model; the long-context setting uses --pairs 73 (512-token context)",
    )
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pairs", type=int, default=16, help="key-value pairs (context 7N+1 tokens)")
    p.add_argument("--memory", type=int, default=8, help="m, memory vectors")
    p.add_argument("--steps", type=int, default=2, help="K, write steps")
    p.add_argument("--grad-mode", default="second")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_models(
    args: argparse.Namespace, names: list[str], device: torch.device, dtype: torch.dtype
) -> dict[str, MemoryModel]:
    """One MemoryModel per variant, all with the same backbone weights and the same GradMem parts."""
    torch.manual_seed(args.seed)
    if args.pretrained:
        return build_pretrained_models(args, names, device, dtype)
    base = LlamaBackbone(
        LlamaConfig(
            vocab_size=70,
            hidden_size=args.width,
            num_layers=args.layers,
            num_heads=args.heads,
            intermediate_size=args.intermediate,
        )
    )
    method_cfg = {"num_memory": args.memory, "write": {"steps": args.steps, "grad_mode": args.grad_mode}}
    reference = build_method("gradmem", base, method_cfg)
    models = {}
    for name in names:
        family, attention, _, bf16 = VARIANTS[name]
        if family == "builtin":
            backbone = LlamaBackbone(LlamaConfig(**{**base.config.__dict__, "attention": attention}))
            backbone.load_state_dict(base.state_dict())
        else:
            backbone = to_hf(base, attn_implementation=attention)
        if bf16:
            backbone = AdaptedBackbone(backbone, BackboneOptions(bf16=True))
        method = build_method("gradmem", backbone, method_cfg)
        method.load_state_dict(reference.state_dict())
        models[name] = MemoryModel(backbone, method).to(device=device, dtype=dtype)
    return models


def build_pretrained_models(
    args: argparse.Namespace, names: list[str], device: torch.device, dtype: torch.dtype
) -> dict[str, MemoryModel]:
    """The same pretrained checkpoint loaded once per variant's attention kernel, same GradMem parts."""
    if any(VARIANTS[n][0] != "hf" for n in names):
        raise SystemExit("--pretrained compares Hugging Face variants only (hf_*)")
    where = {"path": args.pretrained} if Path(args.pretrained).is_dir() else {"pretrained": args.pretrained}
    path = str(resolve_model_path(where))
    method_cfg = {"num_memory": args.memory, "write": {"steps": args.steps, "grad_mode": args.grad_mode}}
    models: dict[str, MemoryModel] = {}
    reference: Any = None
    for name in names:
        backbone = HFBackbone.from_pretrained(path, attn_implementation=VARIANTS[name][1])
        if VARIANTS[name][3]:
            backbone = AdaptedBackbone(backbone, BackboneOptions(bf16=True))
        method = build_method("gradmem", backbone, method_cfg)
        if reference is None:
            reference = method
        method.load_state_dict(reference.state_dict())
        models[name] = MemoryModel(backbone, method).to(device=device, dtype=dtype)
    return models


def calls(model: MemoryModel, batch: Any, compiled: bool) -> dict[str, Callable[[], Any]]:
    """The three measured operations of one model on one batch (the training step eager or compiled)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    # a variant measures the compiled step or fails: no silent eager fallback (its check allows bf16's rounding)
    step = CompiledStep(model, eager_fallback=False) if compiled else None

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        if step is None:
            model(batch).loss.backward()
        else:
            step(batch).assign_grads(step.parameters)
        optimizer.step()

    def eager_gradients() -> None:  # the same arithmetic as the compiled step, for the FLOP count
        model.zero_grad(set_to_none=True)
        model(batch).loss.backward()

    def write_only() -> None:
        with torch.no_grad():
            model.write(batch.context)

    with torch.no_grad():
        memory = model.write(batch.context)

    def read_only() -> None:
        with torch.no_grad():
            model.read(memory, batch.query, batch.target)

    ops = {"train": train_step, "write": write_only, "read": read_only}
    if compiled:
        ops["_train_eager"] = eager_gradients
    return ops


def main() -> None:
    args = parse_args()
    apply_threads(args)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or args.baseline not in names:
        raise SystemExit(f"unknown variants {unknown} or baseline {args.baseline!r} not among {names}")
    models = build_models(args, names, device, dtype)
    task = KVTask(num_pairs=args.pairs)
    batch = collate(task.make_split("train", args.batch, seed=args.seed)).to(device)
    ops = {name: calls(model, batch, VARIANTS[name][2]) for name, model in models.items()}
    report = new_report(args, batch, device)
    for name in names:
        report["variants"][name] = warm_up_and_count(name, ops[name], device)
    # the machine's matmul peak: a large square product and the model's widest projection
    shapes = [
        (2048, 2048, 2048),
        (args.batch * (args.memory + batch.context.ids.shape[1]), args.width, 2 * args.intermediate),
    ]
    peaks: list[float] = []
    for op in ("train", "write", "read"):
        # one matmul-peak measurement per round, interleaved with the variants
        variants = {name: ops[name][op] for name in names}
        if op == "train":
            variants["_matmul_peak"] = lambda: peaks.append(max(matmul_gflops(s, dtype, device, 3) for s in shapes))
        times = interleaved(variants, args.rounds, device)
        times.pop("_matmul_peak", None)
        record_times(report, op, times, names, args)
    peak = summary(peaks)
    report["matmul_peak_gflops"] = peak
    for name in names:
        for entry in report["variants"][name].values():
            entry["fraction_of_peak"] = entry["gflops_per_s"] / peak["max"]
    write_outputs(report, args)


def new_report(args: argparse.Namespace, batch: Any, device: torch.device) -> dict[str, Any]:
    """The report's setting and machine, with no variant measured yet."""
    return {
        "setting": {
            **vars(args),
            "context_tokens": int(batch.context.ids.shape[1]),
            "threads": torch.get_num_threads(),
        },
        "machine": {
            "device": device.type,
            "name": device_name(device),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "variants": {},
    }


def warm_up_and_count(name: str, ops: dict[str, Callable[[], Any]], device: torch.device) -> dict[str, Any]:
    """Run each operation of variant `name` once untimed (first calls allocate and pick kernels), with
    its FLOPs and peak tensor memory; printed. Takes the eager twin of a compiled step out of `ops`."""
    entry: dict[str, Any] = {}
    eager_train = ops.pop("_train_eager", None)
    for op, fn in ops.items():
        fn()
        if op == "train" and eager_train is not None:
            # Compiled code must not run under the counting dispatch modes (Dynamo would retrace it);
            # FLOPs are those of the eager step, tensor peak memory is not measured.
            entry[op] = {"flops": count_flops(eager_train), "peak_bytes": None}
        else:
            entry[op] = {"flops": count_flops(fn), "peak_bytes": peak_bytes(fn, device)}
    print(
        f"{name}: "
        + ", ".join(f"{op} {e['flops'] / 1e9:.1f} GFLOP, {mib(e['peak_bytes'])} MiB" for op, e in entry.items()),
        flush=True,
    )
    return entry


def record_times(
    report: dict[str, Any], op: str, times: dict[str, list[float]], names: list[str], args: argparse.Namespace
) -> None:
    """Add the timings of operation `op` to every variant's report entry (median, examples/s, GFLOP/s,
    ratio to the baseline); printed."""
    for name in names:
        stats = summary(times[name])
        entry = report["variants"][name][op]
        entry.update(
            seconds=stats,
            examples_per_s=args.batch / stats["median"],
            gflops_per_s=entry["flops"] / stats["median"] / 1e9,
        )
        entry["ratio_vs_baseline"] = ratios(times, args.baseline, name)
        print(
            f"{op:5s} {name:22s} {stats['median']:.3f} s (spread {stats['spread']:.0%}), "
            f"{args.batch / stats['median']:.3g} ex/s, speed-up vs {args.baseline}: "
            f"{entry['ratio_vs_baseline']['median']:.2f}x",
            flush=True,
        )


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def write_outputs(report: dict[str, Any], args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "throughput" + (f"_{args.tag}" if args.tag else "")
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    s = report["setting"]
    model = s["pretrained"] or f"{s['layers']} layers, {s['heads']} heads, width {s['width']}"
    lines = [
        f"Setting: {model}, m = {s['memory']}, "
        f"{s['pairs']} pairs ({s['context_tokens']}-token context), K = {s['steps']}, grad mode {s['grad_mode']}, "
        f"batch {s['batch']}, {s['dtype']}, {report['machine']['device']} ({report['machine']['name']}), "
        f"{s['threads']} threads, {s['rounds']} interleaved rounds. Matmul peak (best of the run): "
        f"{report['matmul_peak_gflops']['max']:.0f} GFLOP/s (median {report['matmul_peak_gflops']['median']:.0f}).",
        "",
        "| variant | op | median s | spread | examples/s | speed-up vs "
        + args.baseline
        + " (median, min-max) | GFLOP | GFLOP/s | of peak | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ops in report["variants"].items():
        for op, e in ops.items():
            r = e["ratio_vs_baseline"]
            lines.append(
                f"| {name} | {op} | {e['seconds']['median']:.3f} | {e['seconds']['spread']:.0%} | "
                f"{e['examples_per_s']:.3g} | {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}) | "
                f"{e['flops'] / 1e9:.1f} | {e['gflops_per_s']:.1f} | {e['fraction_of_peak']:.0%} | "
                f"{mib(e['peak_bytes'])} |"
            )
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
