"""Examples and batches: the (context, query, target) triples every task produces.

Everything in gradmem is *right-padded*. With causal attention a pad placed after an example's
real tokens can never influence them, so no attention mask is needed and an example's memory and
answer do not depend on the rest of the batch. Losses and metrics ignore pads through lengths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from gradmem.core.bounded_io import DATA_LIMIT, read_limited_text, text_lines


@dataclass(frozen=True)
class Example:
    """One (context, query, target) triple, already tokenised."""

    context: list[int]  # C: what WRITE stores
    query: list[int]  # Q: what READ sees next to the memory
    target: list[int]  # Y: what READ must produce
    answer_len: int  # leading target tokens that exact match scores (e.g. the value, not `!|`)

    def __post_init__(self) -> None:
        if not self.query:
            raise ValueError("an example needs a non-empty query")
        if not self.target:
            raise ValueError("an example needs a non-empty target")
        if isinstance(self.answer_len, bool) or not isinstance(self.answer_len, int):  # 1.5 or true from a file
            raise ValueError(f"answer_len must be an integer, got {self.answer_len!r}")
        if not 0 < self.answer_len <= len(self.target):
            raise ValueError(f"answer_len={self.answer_len} must be in 1..{len(self.target)}")


@dataclass
class TokenBatch:
    """Right-padded token ids with their true lengths."""

    ids: Tensor  # (B, T) long, pad after each row's length
    lengths: Tensor  # (B,) long

    @property
    def mask(self) -> Tensor:
        """(B, T) bool, True on real tokens."""
        positions = torch.arange(self.ids.shape[1], device=self.ids.device)
        return positions[None, :] < self.lengths[:, None]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.lengths.to(device))

    def __len__(self) -> int:
        return self.ids.shape[0]


@dataclass
class Batch:
    """A collated list of examples: contexts for WRITE, queries and targets for READ."""

    context: TokenBatch
    query: TokenBatch
    target: TokenBatch
    answer_len: Tensor  # (B,) long

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.context.to(device), self.query.to(device), self.target.to(device), self.answer_len.to(device))

    def __len__(self) -> int:
        return len(self.query)


# How the question-answering tasks (bAbI, SQuAD, user question files) lay out a question as the
# query; the target is " answer" then EOS. `str.format` it with `question=`.
QUESTION_LAYOUT = "\nQuestion: {question}\nAnswer:"


def pad_right(rows: Sequence[Sequence[int]], pad_id: int = 0) -> TokenBatch:
    """Stack variable-length rows into a right-padded (B, T) tensor."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max()) if len(rows) else 0
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return TokenBatch(ids, lengths)


def collate(examples: Sequence[Example], pad_id: int = 0) -> Batch:
    """Collate examples into one right-padded batch."""
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    return Batch(
        context=pad_right([e.context for e in examples], pad_id),
        query=pad_right([e.query for e in examples], pad_id),
        target=pad_right([e.target for e in examples], pad_id),
        answer_len=torch.tensor([e.answer_len for e in examples], dtype=torch.long),
    )


def iterate_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int = 0, generator: torch.Generator | None = None
) -> Iterator[Batch]:
    """Yield batches in order, or shuffled with `generator` (the last batch may be smaller)."""
    order = torch.randperm(len(examples), generator=generator).tolist() if generator else range(len(examples))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)


def save_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write examples one JSON object per line."""
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps(asdict(e)) + "\n")


def load_jsonl(path: str | Path) -> list[Example]:
    """Read examples written by `save_jsonl`; a malformed line raises with its line number."""
    examples = []
    for n, line in enumerate(text_lines(read_limited_text(path, DATA_LIMIT, f"data file {path}")), 1):
        if not line.strip():
            continue
        try:
            examples.append(Example(**json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{n}: not a gradmem example ({err})") from err
    return examples
