"""Tables and plots shared by the benchmark scripts: Markdown tables, EM-vs-pairs lines, heatmaps.

Plots use matplotlib's Agg backend (no display needed); matplotlib comes with the `dev` extra.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def percent(values: Sequence[float]) -> str:
    """'97.3' for one value, '97.3 ± 1.2' for several (exact match given as a fraction)."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def save_results(folder: Path, stem: str, data: Any, markdown: str) -> None:
    """Write folder/stem.json (indented) and folder/stem.md, creating the folder: the pair every
    benchmark leaves under results/ (the JSON for tools, the Markdown to read and quote)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(
    path: Path, series: dict[str, dict[int, list[float]]], title: str, xlabel: str = "key-value pairs"
) -> None:
    """One line per series: x -> exact-match values (mean plotted, std as error bars), in percent."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in series.items():
        xs = sorted(points)
        stats = [mean_std(points[x]) for x in xs]
        ax.errorbar(
            xs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o", capsize=3, label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({x for points in series.values() for x in points}))
    ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax.set_ylim(-2, 102)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("exact match, %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(path: Path, panels: dict[str, dict[str, list[tuple[int, float]]]], title: str) -> None:
    """Held-out EM during training: one panel per key of `panels`, in it one line per run label
    ((step, EM) points); a label keeps its colour across panels."""
    plt = pyplot()
    labels = list(dict.fromkeys(label for runs in panels.values() for label in runs))
    colours = {label: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 4.0), sharey=True, squeeze=False)
    for ax, (panel, runs) in zip(axes[0], panels.items()):
        for label, points in runs.items():
            if points:
                ax.plot(
                    [s for s, _ in points],
                    [100 * e for _, e in points],
                    color=colours[label],
                    linewidth=1.2,
                    label=label,
                )
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out EM on the current stage, %")
    handles = [plt.Line2D([], [], color=colours[label]) for label in labels]
    fig.legend(handles, labels, loc="center right", fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / (4.2 * len(panels) + 1.5), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_heatmap(
    path: Path, rows: list[str], cols: list[str], values: list[list[float]], title: str, xlabel: str, ylabel: str
) -> None:
    """A rows x cols grid of exact-match fractions, annotated in percent."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 3.0 + 0.55 * len(cols)), max(2.8, 1.6 + 0.45 * len(rows))))
    image = ax.imshow([[100 * v for v in row] for row in values], vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="exact match, %")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
