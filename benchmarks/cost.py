"""Cost of GradMem vs the full context (paper App. D): WRITE vs prefill, per-query READ vs decoding.

For each context length N, one run measures side by side (interleaved repetitions, medians):
  write      K WRITE steps over [M; C] (GradMem, test time) + the memory's KV prefill (m vectors)
  prefill    one forward over C that builds the full-context KV cache
  read_mem   one query answered with a KV cache of the m memory vectors (query + greedy answer)
  read_full  the same query answered with the KV cache of the N context tokens
Both READs use the same Hugging Face Llama with a KV cache, so only the cached length differs.
Memory pays back after q* = (write - prefill) / (read_full - read_mem) queries per context when
the full-context KV cache is kept between queries, and after write / (prefill + read_full - read_mem)
queries when it is not (every query re-reads the context).
A FLOP estimate of the same quantities is printed next to the timings (the measured CPU times
include Python overheads that FLOPs do not). Weights are random: cost does not depend on them.

    python benchmarks/cost.py --lengths 128,256,512,1024 --steps 1,2,5 --out results/cost
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache, LlamaConfig

from gradmem.backbones import HFBackbone
from gradmem.backbones.base import context_state_floats
from gradmem.cli.options import int_list
from gradmem.core.batch import pad_right
from gradmem.core.device import device_option
from gradmem.methods import build_method
from gradmem.methods.model import MemoryModel


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode(lm, cache: DynamicCache, base: int, query: torch.Tensor, answer_len: int) -> None:
    """Answer one query from `cache` (cropped back to `base` afterwards): query forward + greedy steps."""
    out = lm(input_ids=query, past_key_values=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    for _ in range(answer_len - 1):
        out = lm(input_ids=token, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
    cache.crop(base - cache.get_seq_length())  # this transformers version crops by a negative count


def forward_flops(cfg: LlamaConfig, tokens: int, offset: int) -> float:
    """Forward FLOPs for `tokens` new tokens after `offset` cached ones (matmuls + attention)."""
    d, layers, ff, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    per_token = 2 * layers * (4 * d * d + 3 * d * ff) + 2 * d * vocab
    attended = sum(offset + t + 1 for t in range(tokens))
    return tokens * per_token + 4 * layers * d * attended


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int_list, default="128,256,512,1024", help="context lengths N in tokens")
    parser.add_argument("--steps", type=int_list, default="1,2,5", help="WRITE steps K")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=70, help="70 = the key-value character vocabulary")
    parser.add_argument("--memory", type=int, default=8, help="m, memory vectors")
    parser.add_argument("--query-tokens", type=int, default=5, help="5 = `?!ab:`")
    parser.add_argument("--answer-tokens", type=int, default=4, help="4 = `cd!|`")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--queries", type=int, default=10, help="queries timed per repetition (their mean is used)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", type=device_option, default="auto", help="auto (CUDA when available), cpu, cuda:N")
    parser.add_argument("--out", default="results/cost")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[LlamaConfig, MemoryModel]:
    """A random-weight HF Llama of the asked size with GradMem on it, in eval mode on the device."""
    cfg = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=4 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=max(args.lengths) + 64,
    )
    backbone = HFBackbone.from_config(cfg, attn_implementation="sdpa")  # no second order at test time
    model = MemoryModel(backbone, build_method("gradmem", backbone, {"num_memory": args.memory})).to(args.device).eval()
    return cfg, model


def time_length(args: argparse.Namespace, model: MemoryModel, n: int) -> dict[str, float]:
    """Median seconds of each measured quantity (write_K, prefill, read_full, read_mem) for contexts of n tokens."""
    lm, ks = model.backbone.model, args.steps
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    ids = torch.randint(4, args.vocab, (1, n), device=args.device)
    context = pad_right([ids[0].tolist()]).to(args.device)
    query = torch.randint(4, args.vocab, (1, args.query_tokens), device=args.device)
    times: dict[str, list[float]] = {k: [] for k in ["prefill", "read_full", "read_mem"] + [f"write_{k}" for k in ks]}
    for rep in range(args.repeats + 1):  # repetition 0 warms up and is dropped
        sample: dict[str, float] = {}
        for k in ks:

            def run_write(k: int = k) -> None:
                memory = model.write(context, steps=k)
                lm(inputs_embeds=memory.prefix, use_cache=True)  # the memory's KV cache, once per memory
                sync()

            sample[f"write_{k}"] = timed(run_write)
        cache_c = DynamicCache()
        sample["prefill"] = timed(lambda: (lm(input_ids=ids, past_key_values=cache_c, use_cache=True), sync()))
        cache_m = DynamicCache()
        lm(inputs_embeds=model.write(context, steps=ks[0]).prefix, past_key_values=cache_m, use_cache=True)
        full, mem = [], []
        for _ in range(args.queries):  # interleaved: full, memory, full, memory ...
            full.append(timed(lambda: (decode(lm, cache_c, n, query, args.answer_tokens), sync())))
            mem.append(timed(lambda: (decode(lm, cache_m, args.memory, query, args.answer_tokens), sync())))
        sample["read_full"], sample["read_mem"] = statistics.mean(full), statistics.mean(mem)
        if rep:
            for key, value in sample.items():
                times[key].append(value)
    return {key: statistics.median(v) for key, v in times.items()}


def rows_of(
    args: argparse.Namespace, cfg: LlamaConfig, model: MemoryModel, n: int, med: dict[str, float]
) -> list[dict]:
    """One row per K for contexts of n tokens: the medians in ms, the break-even query counts, the state sizes."""
    q, a, m = args.query_tokens, args.answer_tokens, args.memory
    flops_read_full = forward_flops(cfg, q, n) + sum(forward_flops(cfg, 1, n + q + i) for i in range(a - 1))
    flops_read_mem = forward_flops(cfg, q, m) + sum(forward_flops(cfg, 1, m + q + i) for i in range(a - 1))
    rows = []
    for k in args.steps:
        flops_write = 3 * k * forward_flops(cfg, m + n, 0) + forward_flops(cfg, m, 0)  # fwd + bwd per step
        gain = med["read_full"] - med["read_mem"]
        extra = med[f"write_{k}"] - med["prefill"]
        rows.append(
            {
                "context_tokens": n,
                "write_steps": k,
                "write_ms": 1000 * med[f"write_{k}"],
                "prefill_ms": 1000 * med["prefill"],
                "read_mem_ms": 1000 * med["read_mem"],
                "read_full_ms": 1000 * med["read_full"],
                "break_even_queries": extra / gain if gain > 0 else math.inf,
                "break_even_queries_flops": (flops_write - forward_flops(cfg, n, 0))
                / (flops_read_full - flops_read_mem),
                # when the full-context KV cache is not kept, every query re-reads the context
                "break_even_queries_reread": med[f"write_{k}"] / (med["prefill"] + gain),
                "memory_floats": m * args.width,
                "kv_cache_floats": context_state_floats(model.backbone, n),
            }
        )
    return rows


def setup_of(args: argparse.Namespace) -> dict:
    return {
        "model": f"HF Llama {args.layers} layers x width {args.width}, {args.heads} heads, vocab {args.vocab}, random weights",
        "memory_vectors": args.memory,
        "query_tokens": args.query_tokens,
        "answer_tokens": args.answer_tokens,
        "repeats": args.repeats,
        "queries_per_repeat": args.queries,
        "device": args.device,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "command": "python benchmarks/cost.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg, model = build(args)
    rows = []
    with torch.no_grad():
        for n in args.lengths:
            for row in rows_of(args, cfg, model, n, time_length(args, model, n)):
                rows.append(row)
                print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    setup = setup_of(args)
    (out / "cost.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    write_table(out, setup, rows)
    plot(out, rows, args.steps)
    return 0


def write_table(out: Path, setup: dict, rows: list[dict]) -> None:
    lines = [
        f"# Cost: GradMem WRITE/READ vs full-context prefill/decoding ({setup['device']})\n",
        f"{setup['model']}; m = {setup['memory_vectors']}; a query = {setup['query_tokens']} tokens + "
        f"{setup['answer_tokens']} greedy answer tokens; medians of {setup['repeats']} interleaved repetitions.\n",
        f"Command: `{setup['command']}`\n",
        "| N tokens | K | write ms | prefill ms | read (memory) ms | read (full context) ms | break-even queries | "
        "break-even (FLOPs) | break-even, context re-read per query | memory / KV floats |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        be = "never" if math.isinf(r["break_even_queries"]) else f"{r['break_even_queries']:.0f}"
        lines.append(
            f"| {r['context_tokens']} | {r['write_steps']} | {r['write_ms']:.1f} | {r['prefill_ms']:.1f} | "
            f"{r['read_mem_ms']:.2f} | {r['read_full_ms']:.2f} | {be} | {r['break_even_queries_flops']:.0f} | "
            f"{r['break_even_queries_reread']:.1f} | {r['memory_floats']} / {r['kv_cache_floats']} |"
        )
    (out / "cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def plot(out: Path, rows: list[dict], ks: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lengths = sorted({r["context_tokens"] for r in rows})
    first = [r for r in rows if r["write_steps"] == ks[0]]
    for k in ks:
        left.plot(lengths, [r["write_ms"] for r in rows if r["write_steps"] == k], "o-", label=f"WRITE K={k}")
    left.plot(lengths, [r["prefill_ms"] for r in first], "s--", label="full-context prefill")
    left.plot(lengths, [r["read_full_ms"] for r in first], "^--", label="READ, full context (per query)")
    left.plot(lengths, [r["read_mem_ms"] for r in first], "v-", label="READ, memory (per query)")
    left.set(xscale="log", yscale="log", xlabel="context tokens N", ylabel="ms", title="measured time")
    left.legend(fontsize=8)
    for k in ks:
        sel = [r for r in rows if r["write_steps"] == k]
        right.plot(lengths, [r["break_even_queries"] for r in sel], "o-", label=f"measured, K={k}")
        right.plot(lengths, [r["break_even_queries_flops"] for r in sel], "x:", label=f"FLOPs, K={k}")
    right.set(
        xscale="log",
        yscale="log",
        xlabel="context tokens N",
        ylabel="queries per context",
        title="queries after which memory is cheaper",
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
