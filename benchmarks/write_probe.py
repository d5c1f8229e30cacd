"""Does one WRITE step of a frozen pretrained LM carry a story's answer? A linear-probe diagnostic.

    python benchmarks/write_probe.py --model smollm2-135m --task 1 --statements-per-question 1

For generated bAbI-style stories, GradMem's memory starts at M0 = the mean token embedding and takes
one normalised gradient step of the reconstruction loss, M1 = M0 - lr * g / |g|, with the backbone
as it was pretrained (nothing trained). A linear classifier (multinomial logistic regression on
standardised features, fitted on `--fit` stories, scored on the rest) then predicts the answer from:

- `gradient`: the WRITE gradient g itself;
- `memory@L`: the hidden states of the m memory positions after decoder layer L when READ runs on
  [M1; question];
- `query@L`: the hidden state of the question's last token (the one that predicts the answer).

High `gradient` accuracy with low `query@L` accuracy means the answer is written but a READ still
has to learn to fetch it: the information is there before any meta-training. Chance = the share of
the most frequent answer among the scored stories. Writes `<out>.json` / `<out>.md`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import save_results  # noqa: E402

from gradmem.cli.options import float_list, int_list
from gradmem.core.batch import iterate_batches
from gradmem.methods.training_free import mean_embedding
from gradmem.run.build import build_model, build_task


def probe_accuracy(features: Tensor, labels: Tensor, fit: int, steps: int = 300) -> float:
    """Held-out accuracy of an L2-regularised softmax classifier fitted on the first `fit` rows."""
    x = features - features[:fit].mean(0)
    x = x / x[:fit].std(0).clamp_min(1e-6)  # standardise: story-specific directions are small
    weight = torch.zeros(x.shape[1], int(labels.max()) + 1, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[:fit] @ weight, labels[:fit]) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        optimizer.step()
    return ((x[fit:] @ weight).argmax(1) == labels[fit:]).float().mean().item()


def collect(args: argparse.Namespace) -> tuple[dict[str, list[Tensor]], list[str]]:
    """Features of every story (by name) and the answers, in story order."""
    tokenizer = {"type": "hf", "pretrained": args.model}
    spec = {
        "task": {
            "name": "babi",
            "task": args.task,
            "questions_per_story": 1,
            "statements_per_question": args.statements_per_question,
            "tokenizer": tokenizer,
        },
        "backbone": {"name": "hf", "pretrained": args.model, "freeze": True},
        "method": {"name": "gradmem", "num_memory": args.memory, "projection": "none", "write_head": False},
    }
    task = build_task(spec)
    model = build_model(spec, task)
    backbone, method = model.backbone, model.method
    questions = task.questions("train", args.stories, args.seed)
    examples = task.make_split("train", args.stories, args.seed)
    layers = backbone.decoder_layers()
    captured: dict[int, Tensor] = {}
    hooks = [
        layers[i - 1].register_forward_hook(
            lambda mod, inp, out, i=i: captured.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i in args.layers
        if i > 0
    ]
    memory0 = mean_embedding(backbone)  # (D,)
    features: dict[str, list[Tensor]] = {}
    m = args.memory
    try:
        for batch in iterate_batches(examples, 8, task.tokenizer.pad_id):
            b = len(batch.context)
            start = memory0.expand(b, m, -1).clone().requires_grad_(True)  # (B, m, D)
            loss = method.reconstruction_loss(backbone, start, batch.context, backbone.embed(batch.context.ids))
            (grad,) = torch.autograd.grad(loss.sum(), start)  # sum: each example's gradient is its own
            features.setdefault("gradient", []).append(grad.flatten(1))
            step = grad / grad.flatten(1).norm(dim=1)[:, None, None]
            last = m + batch.query.mask.sum(1) - 1  # (B,) position of each question's last token
            rows = torch.arange(b)
            with torch.no_grad():
                for lr in args.lrs:
                    embeds = torch.cat((start - lr * step, backbone.embed(batch.query.ids)), 1)
                    captured[0] = embeds
                    backbone.hidden(embeds)
                    for i in args.layers:
                        features.setdefault(f"lr {lr}: memory@{i}", []).append(captured[i][:, :m].flatten(1))
                        features.setdefault(f"lr {lr}: query@{i}", []).append(captured[i][rows, last])
    finally:
        for hook in hooks:
            hook.remove()
    return features, [q.answer for q in questions]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", type=int, default=1)
    parser.add_argument("--statements-per-question", type=int, default=1)
    parser.add_argument("--memory", type=int, default=8)
    parser.add_argument("--stories", type=int, default=400)
    parser.add_argument("--fit", type=int, default=300, help="stories the probe is fitted on; the rest score it")
    parser.add_argument("--lrs", type=float_list, default="0.3,3.0", help="norms of the WRITE step M1 - M0")
    parser.add_argument("--layers", type=int_list, default="0,8,16,26,30", help="0 = the input embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/pretrained/write_probe")
    args = parser.parse_args()
    if not 0 < args.fit < args.stories:
        parser.error("need 0 < --fit < --stories")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    features, answers = collect(args)
    names = sorted(set(answers))
    labels = torch.tensor([names.index(a) for a in answers])
    chance = torch.bincount(labels[args.fit :]).max().item() / (len(labels) - args.fit)
    rows: dict[str, Any] = {
        name: probe_accuracy(torch.cat(parts).detach(), labels, args.fit) for name, parts in features.items()
    }
    for name, acc in rows.items():
        print(f"{name}: {100 * acc:.1f} %", flush=True)
    out = Path(args.out)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    data = {"settings": settings, "chance": chance, "accuracy": rows}
    save_results(out.parent, out.stem, data, "\n".join(report(args, settings, chance, rows)))


def report(args: argparse.Namespace, settings: dict[str, Any], chance: float, rows: dict[str, Any]) -> list[str]:
    """The probe accuracies as Markdown lines: the gradient's, then one table row per step norm."""
    lines = [
        f"# Linear probe of one WRITE step, {args.model} frozen (GENERATED bAbI-style QA{args.task}, "
        f"{args.statements_per_question} statement(s) per question)",
        "",
        f"Answer accuracy (%) of a linear probe fitted on {args.fit} stories, scored on {args.stories - args.fit}; "
        f"chance (most frequent answer) {100 * chance:.1f} %. M0 = mean token embedding, m = {args.memory}; "
        "the step M1 - M0 has norm `lr`.",
        "",
        f"gradient g: **{100 * rows['gradient']:.1f}**",
        "",
        "| step norm | "
        + " | ".join(f"memory@{i}" for i in args.layers)
        + " | "
        + " | ".join(f"query@{i}" for i in args.layers)
        + " |",
        "|---|" + "---|" * (2 * len(args.layers)),
    ]
    for lr in args.lrs:
        cells = [f"{100 * rows[f'lr {lr}: {kind}@{i}']:.1f}" for kind in ("memory", "query") for i in args.layers]
        lines.append(f"| {lr} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Command:",
        "",
        "    python benchmarks/write_probe.py "
        + " ".join(
            f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in settings.items()
        ),
        "",
    ]
    return lines


if __name__ == "__main__":
    main()
