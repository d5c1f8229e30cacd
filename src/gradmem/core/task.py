"""The Task and Tokenizer protocols, the one formula that seeds a task's data splits, and the one
way a question-answering task encodes an example from text (`answer_example`).

A task turns a seed into examples (`make_split`) and its own text into examples
(`encode_strings`, what `gradmem ask` and data files use); it holds the tokenizer every example
is encoded with. The registry (gradmem.tasks.TASKS) maps a spec's `name` to a class that keeps
this contract; callers use nothing else of a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from gradmem.core.batch import Example

SPLITS = ("train", "valid", "test")


def split_seed(split: str, seed: int) -> int:
    """The random stream of one split under a base seed: `seed * 3 + {train: 0, valid: 1, test: 2}`,
    so the three splits of one seed never share draws and no two seeds share a split's stream."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    return seed * len(SPLITS) + SPLITS.index(split)


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids with the special ids READ and generation need."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def unk_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of a text (no special tokens added)."""
        ...

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of token ids."""
        ...

    def unknown(self, text: str, most: int = 10) -> list[str]:
        """Up to `most` pieces of `text` (characters or words) this tokenizer cannot encode."""
        ...

    def text_pattern(self) -> str | None:
        """A regular expression matching exactly the texts it encodes without unknown tokens, or None
        where no such expression exists (a subword vocabulary)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able spec that rebuilds this tokenizer."""
        ...


def answer_example(tokenizer: Tokenizer, context: str, query: str, answer: str) -> Example:
    """An extractive-QA example from text: the answer's tokens then EOS, all of the answer scored."""
    answer_ids = tokenizer.encode(answer)
    return Example(tokenizer.encode(context), tokenizer.encode(query), answer_ids + [tokenizer.eos_id], len(answer_ids))


@runtime_checkable
class Task(Protocol):
    """A source of (context, query, target) examples for one kind of problem."""

    config: Any  # the task's config dataclass (the spec's task section)
    tokenizer: Tokenizer
    question_layout: str  # how a plain question is asked, with "{question}" where it goes

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        """`num_examples` examples of `split` ("train", "valid", "test") drawn with `seed`."""
        ...

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """One example from text, encoded as the task's own examples are."""
        ...

    def example(self) -> tuple[str, list[str]]:
        """A sample context and questions for it (shown by the web page)."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """The task's spec section."""
        ...

    def describe(self) -> str:
        """A one-line summary for logs."""
        ...
