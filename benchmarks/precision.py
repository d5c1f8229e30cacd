"""fp32 vs bf16 autocast: the training step of one run spec in both precisions, side by side.

    python benchmarks/precision.py --config configs/babi_qa1_cpu.json            # its last stage, fp32 vs bf16
    python benchmarks/precision.py --config configs/babi_qa1_smollm2_cpu.json --rounds 3 --tag smollm2

Both variants are built from the same spec with `bf16: true` and hold the same weights (the bf16 one
runs its decoder and LM head under bfloat16 autocast; the fp32 one, a copy, runs its steps inside
the backbone's `full_precision()`; weights, optimiser and memory stay fp32); every round times one
training step of each on the same batch (WRITE with its K steps, READ, backward, AdamW), in a rotated
order. Whether bf16 pays depends on the CPU (AMX or AVX512-BF16, see gradmem.core.device.fast_bf16), so
the result names the CPU and its bf16 flags and says what `backbone.bf16: "auto"` would choose.
A preset (a file with "base" and "methods") is timed with its base spec. Writes
results/perf/precision[_tag].{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from perfkit import interleaved, ratios, summary  # noqa: E402
from report import markdown_table, save_results  # noqa: E402

from gradmem.cli.main import positive_int  # noqa: E402
from gradmem.core.batch import collate  # noqa: E402
from gradmem.core.device import cpu_bf16_flags, cpu_model_name, device_name, device_option, fast_bf16, resolve_device  # noqa: E402
from gradmem.methods.model import MemoryModel  # noqa: E402
from gradmem.run.build import build_model, build_task  # noqa: E402
from gradmem.run.overrides import apply_overrides
from gradmem.training.trainer import TrainConfig, curriculum  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def load_spec(path: str, overrides: list[str]) -> dict[str, Any]:
    spec = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    if "base" in spec and "methods" in spec:  # a preset: its shared base spec
        spec = spec["base"]
    return apply_overrides(spec, overrides)


def training_step(model: MemoryModel, batch: Any, full_precision: bool = False) -> Callable[[], None]:
    """One meta-training step: forward (WRITE + READ), backward through the WRITE, AdamW; with
    `full_precision` the backbone computes in fp32 whatever its bf16 option says."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with model.backbone.full_precision() if full_precision else nullcontext():
            model(batch).loss.backward()
        optimizer.step()

    return step


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The options and the run spec they name (a preset's base spec, with the --set overrides)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "babi_qa1_cpu.json"), help="run spec or preset")
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides, e.g. train.batch_size=8")
    parser.add_argument(
        "--stage", type=int, default=-1, help="curriculum stage whose data is timed (default: the last)"
    )
    parser.add_argument("--rounds", type=positive_int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    parser.add_argument("--device", type=device_option, default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--tag", default="", help="results name suffix")
    parser.add_argument("--out", default=str(ROOT / "results" / "perf"), help="results folder")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.config, args.set)
    except (OSError, ValueError) as err:
        parser.error(f"cannot read --config {args.config}: {err}")
    stages = curriculum(spec["task"], TrainConfig(**spec.get("train", {})))
    if not -len(stages) <= args.stage < len(stages):
        parser.error(f"--stage {args.stage}: the spec has {len(stages)} curriculum stage(s)")
    return args, spec


def run(args: argparse.Namespace, spec: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Time both precisions on one batch of the chosen stage: the result without its text."""
    cfg = TrainConfig(**spec.get("train", {}))
    task = build_task({"task": curriculum(spec["task"], cfg)[args.stage].task})
    batch = collate(task.make_split("train", cfg.batch_size, seed=0), task.tokenizer.pad_id).to(device)

    # One model under the autocast wrapper, copied: the same weights; the copy computes in full precision.
    variant = copy.deepcopy(spec)
    variant["backbone"]["bf16"] = True
    torch.manual_seed(cfg.seed)
    bf16_model = build_model(variant).to(device).train()
    fp32_model = copy.deepcopy(bf16_model)
    steps = {"fp32": training_step(fp32_model, batch, full_precision=True), "bf16": training_step(bf16_model, batch)}
    interleaved(steps, 1, device)  # warm-up: allocator, autocast caches
    times = interleaved(steps, args.rounds, device)
    return {
        "config": args.config,
        "overrides": args.set,
        "stage": args.stage,
        "batch_size": cfg.batch_size,
        "context_tokens": int(batch.context.lengths.max()),
        "cpu": cpu_model_name() if device.type == "cpu" else device_name(device),
        "cpu_bf16_flags": cpu_bf16_flags(),
        "auto_chooses_bf16": fast_bf16(device.type),
        "threads": args.threads,
        "torch": torch.__version__,
        "seconds": {name: summary(values) for name, values in times.items()},
        "fp32_over_bf16": ratios(times, "fp32", "bf16"),
    }


def report(args: argparse.Namespace, result: dict[str, Any], command: list[str]) -> str:
    """The result as Markdown: the machine, a table of seconds per step, the verdict, the command."""
    speed = result["fp32_over_bf16"]["median"]
    verdict = f"bf16 {speed:.2f}x {'faster' if speed >= 1 else 'slower'} than fp32"
    rows = [[name, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}"] for name, s in result["seconds"].items()]
    return (
        f"# Training step, fp32 vs bf16 autocast: {Path(args.config).name}\n\n"
        f"{result['cpu']} (bf16 flags: {', '.join(result['cpu_bf16_flags']) or 'none'}), "
        f"{args.threads} thread(s), torch {torch.__version__}; batch {result['batch_size']}, "
        f"stage {args.stage}, contexts up to {result['context_tokens']} tokens; {args.rounds} interleaved rounds.\n\n"
        + markdown_table(["precision", "median s/step", "min", "max"], rows)
        + f"\n**{verdict}** (per-round ratio, median; range {result['fp32_over_bf16']['min']:.2f}-"
        f'{result["fp32_over_bf16"]["max"]:.2f}); `bf16: "auto"` chooses '
        f"{'bf16' if result['auto_chooses_bf16'] else 'fp32'} here.\n\n"
        f"Command: `python benchmarks/precision.py {' '.join(command)}`\n"
    )


def main(argv: list[str] | None = None) -> int:
    args, spec = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args, spec, resolve_device(args.device))
    text = report(args, result, sys.argv[1:] if argv is None else argv)
    save_results(Path(args.out), "precision" + (f"_{args.tag}" if args.tag else ""), result, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
