"""A memory's greedy reconstruction with and without the backbone's KV cache, side by side.

Writes one key-value context per size into a checkpoint's engine (a temporary store), then decodes
each memory back into text both ways in interleaved rounds (round r runs both, in a rotated order,
so the speed-up is taken side by side on a shared machine) and checks that both decode the same
tokens. Prints a table and writes results/perf/reconstruction_cache{_tag}.{json,md}.

    OMP_NUM_THREADS=1 python benchmarks/reconstruction_cache.py --checkpoint checkpoints/kv16 --pairs 16 64
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfkit import RESULTS, interleaved, ratios, summary  # noqa: E402
from report import save_results  # noqa: E402

from gradmem.core.device import cpu_model_name  # noqa: E402
from gradmem.serve.budget import Budget  # noqa: E402
from gradmem.serve.engine import Engine  # noqa: E402
from gradmem.serve.fidelity import greedy_reconstruction  # noqa: E402
from gradmem.tasks.kv import KVConfig, sample_kv_strings  # noqa: E402

VARIANTS = ("uncached", "cached")


def compare(engine: Engine, pairs: list[int], rounds: int, seed: int = 0) -> list[dict[str, Any]]:
    """For each size: write a context of that many pairs, time its reconstruction both ways."""
    rng, rows = random.Random(seed), []
    for n in pairs:
        text, _, _ = sample_kv_strings(KVConfig(num_pairs=n), rng)
        (written,) = engine.write_texts([text])
        tokens, chunk = len(engine.tokenizer.encode(text)), engine.chunk_tokens
        blocks = engine.memory(written.id).prefix.view(-1, engine.block_vectors, engine.model.backbone.hidden_size)
        length = min(chunk, tokens)  # every block decodes to the longest chunk's length

        def decode(cache: bool) -> torch.Tensor:
            return greedy_reconstruction(engine.model, blocks, length, cache=cache)

        same = torch.equal(decode(True), decode(False))  # also the warm-up of both paths
        times = interleaved({name: (lambda c=name == "cached": decode(c)) for name in VARIANTS}, rounds, blocks.device)
        rows.append(
            {
                "pairs": n,
                "context_tokens": tokens,
                "blocks": blocks.shape[0],
                "block_vectors": engine.block_vectors,
                "positions": {
                    name: Budget.reconstruction_positions(tokens, chunk, engine.block_vectors, cached=name == "cached")
                    for name in VARIANTS
                },
                "same_tokens": same,
                "seconds": {name: summary(times[name]) for name in VARIANTS},
                "speedup": ratios(times, "uncached", "cached"),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pairs | context tokens | blocks x m | positions uncached / cached | uncached s (median, spread) "
        "| cached s (median, spread) | speed-up (median, min-max) | same tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, up, pos = r["seconds"], r["speedup"], r["positions"]
        lines.append(
            f"| {r['pairs']} | {r['context_tokens']} | {r['blocks']} x {r['block_vectors']} "
            f"| {pos['uncached']} / {pos['cached']} "
            f"| {s['uncached']['median']:.3f} ({s['uncached']['spread']:.0%}) "
            f"| {s['cached']['median']:.3f} ({s['cached']['spread']:.0%}) "
            f"| {up['median']:.1f}x ({up['min']:.1f}-{up['max']:.1f}) | {'yes' if r['same_tokens'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/kv16")
    parser.add_argument("--pairs", type=int, nargs="+", default=[16, 64], help="context sizes in key-value pairs")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    from gradmem.run.checkpoint import load_checkpoint
    from gradmem.serve.engine_config import TaskText
    from gradmem.serve.store import MemoryStore

    torch.set_num_threads(args.threads)
    model, task, _ = load_checkpoint(args.checkpoint, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as store:
        engine = Engine(model, task.tokenizer, MemoryStore(store), text=TaskText.of(task))
        rows = compare(engine, args.pairs, args.rounds, args.seed)
    command = "python benchmarks/reconstruction_cache.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {
        "command": command,
        "checkpoint": args.checkpoint,
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "results": rows,
    }
    setting = (
        f"Greedy reconstruction of one memory per size ({args.checkpoint}, write defaults), with the "
        f"backbone's KV cache and without it, {args.rounds} interleaved rounds, fp32, {result['cpu']}, "
        f"{result['threads']} torch thread(s), torch {torch.__version__}. Positions: what the backbone runs "
        "(gradmem.serve.budget.Budget.reconstruction_positions)."
    )
    text = f"{setting}\n\n{table(rows)}\n\nCommand: `{command}`\n"
    save_results(Path(args.out), "reconstruction_cache" + (f"_{args.tag}" if args.tag else ""), result, text)
    print(text)
    return 0 if all(r["same_tokens"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
