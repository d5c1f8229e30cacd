"""Associative key-value retrieval, the paper's main benchmark, in its exact character format.

Context `!k1:v1!!k2:v2!...!kN:vN!|`, query `?!kj:`, target `vj!|` for one pair j chosen uniformly.
Keys are unique within an example; values may repeat. Exact match scores the value characters only.
With 2-character keys and values and no noise the context is 7N+1 tokens long.
"""

from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

from gradmem.core.batch import Example
from gradmem.core.task import split_seed
from gradmem.tasks.tokenizers import CharTokenizer, kv_alphabet


@dataclass
class KVConfig:
    """Shape of the key-value task."""

    num_pairs: int = 4  # N: key-value pairs written into each context
    key_len: int = 2  # characters per key (the paper uses 2)
    value_len: int = 2  # characters per value (the paper uses 2); also the scored answer length
    alphabet_size: int = 62  # 62 (a-z A-Z 0-9, the paper) or 512 (the larger-alphabet variant)
    noise_len: int = 0  # random alphabet characters between consecutive pairs; 0 = the paper's format
    value_len_max: int | None = None  # values of value_len..value_len_max characters (answers of varying length)

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {self.num_pairs}")
        if self.key_len < 1 or self.value_len < 1:
            raise ValueError(f"key_len and value_len must be >= 1, got {self.key_len}, {self.value_len}")
        if self.noise_len < 0:
            raise ValueError(f"noise_len must be >= 0, got {self.noise_len}")
        if self.value_len_max is not None and self.value_len_max < self.value_len:
            raise ValueError(f"value_len_max ({self.value_len_max}) must be >= value_len ({self.value_len})")
        kv_alphabet(self.alphabet_size)  # raises for an unsupported size
        if self.alphabet_size**self.key_len < self.num_pairs:
            raise ValueError(
                f"only {self.alphabet_size}**{self.key_len} distinct keys exist, fewer than num_pairs={self.num_pairs}"
            )

    @property
    def context_len(self) -> int:
        """Longest context in tokens (7N+1 for the paper's 2-character keys and values)."""
        pair = self.key_len + (self.value_len_max or self.value_len) + 3  # `!k:v!`
        return self.num_pairs * pair + (self.num_pairs - 1) * self.noise_len + 1


def kv_tokenizer(cfg: KVConfig) -> CharTokenizer:
    """The character tokenizer for `cfg`'s alphabet (vocab 70 for 62 symbols, 520 for 512)."""
    return CharTokenizer(kv_alphabet(cfg.alphabet_size))


def _unique_keys(cfg: KVConfig, alphabet: list[str], rng: random.Random) -> list[str]:
    space = cfg.alphabet_size**cfg.key_len
    if space <= sys.maxsize:
        # sample() over a range draws without replacement and never materialises the key space.
        indices = rng.sample(range(space), cfg.num_pairs)
    else:
        seen: dict[int, None] = {}  # ordered, so the draw order is reproducible
        while len(seen) < cfg.num_pairs:
            seen.setdefault(rng.randrange(space), None)
        indices = list(seen)
    keys = []
    for index in indices:
        chars = []
        for _ in range(cfg.key_len):
            index, digit = divmod(index, cfg.alphabet_size)
            chars.append(alphabet[digit])
        keys.append("".join(chars))
    return keys


def sample_kv_strings(cfg: KVConfig, rng: random.Random) -> tuple[str, str, str]:
    """Draw one example as text: (context, query, target)."""
    alphabet = kv_alphabet(cfg.alphabet_size)
    keys = _unique_keys(cfg, alphabet, rng)
    if cfg.value_len_max is None:  # the paper's fixed length (and the draws of every earlier release)
        values = ["".join(rng.choices(alphabet, k=cfg.value_len)) for _ in keys]
    else:
        values = ["".join(rng.choices(alphabet, k=rng.randint(cfg.value_len, cfg.value_len_max))) for _ in keys]
    blocks = []
    for i, (key, value) in enumerate(zip(keys, values)):
        blocks.append(f"!{key}:{value}!")
        if cfg.noise_len and i < len(keys) - 1:
            blocks.append("".join(rng.choices(alphabet, k=cfg.noise_len)))
    j = rng.randrange(cfg.num_pairs)
    return "".join(blocks) + "|", f"?!{keys[j]}:", f"{values[j]}!|"


def generate_kv(cfg: KVConfig, num_examples: int, seed: int, tokenizer: CharTokenizer | None = None) -> list[Example]:
    """`num_examples` tokenised examples; the same (cfg, seed) always gives the same list."""
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0, got {num_examples}")
    tokenizer = tokenizer or kv_tokenizer(cfg)
    rng = random.Random(seed)  # local generator: no dependence on, or change to, global state
    examples = []
    for _ in range(num_examples):
        context, query, target = sample_kv_strings(cfg, rng)
        examples.append(
            Example(
                context=tokenizer.encode(context),
                query=tokenizer.encode(query),
                target=tokenizer.encode(target),
                answer_len=len(target) - 2,  # the value, not the closing "!|"
            )
        )
    return examples


class KVTask:
    """The key-value task for the task registry: a config, its tokenizer, and seeded splits.

    Split seeds are `seed * 3 + {train: 0, valid: 1, test: 2}`, so the three splits of one seed
    are drawn from different streams and no two (seed, split) pairs share a stream.
    """

    name = "kv"
    question_layout = "{question}"  # a query ("?!ab:") is asked as typed

    def example(self) -> tuple[str, list[str]]:
        """A context and its queries in this task's format, for the web page."""
        return "!ab:cd!!ef:gh!|", ["?!ab:", "?!ef:"]

    def __init__(self, config: KVConfig | None = None, **overrides: Any) -> None:
        self.config = replace(config or KVConfig(), **overrides)
        self.tokenizer = kv_tokenizer(self.config)

    def split_seed(self, split: str, seed: int) -> int:
        """The generator seed used for `split` under the base `seed`."""
        return split_seed(split, seed)

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        """`num_examples` examples of `split` ("train", "valid" or "test") for base `seed`."""
        return generate_kv(self.config, num_examples, self.split_seed(split, seed), self.tokenizer)

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """An example from text in the task's format, e.g. ("!ab:cd!!ef:gh!|", "?!ab:", "cd!|").

        Scored as the task's own splits: the value's characters, not the closing "!|" (with fixed-
        length values, the first `value_len` characters). Characters outside the vocabulary encode
        to [UNK] (gradmem.tasks.data_files refuses them).
        """
        if len(target) < self.config.value_len:
            raise ValueError(f"target {target!r} is shorter than the task's {self.config.value_len}-character value")
        value = len(target) - 2 if self.config.value_len_max and target.endswith("!|") else self.config.value_len
        return Example(
            self.tokenizer.encode(context),
            self.tokenizer.encode(query),
            self.tokenizer.encode(target),
            answer_len=value,
        )

    def to_dict(self) -> dict[str, Any]:
        """The task's config as plain JSON data."""
        return {"name": self.name, **asdict(self.config)}

    def describe(self) -> str:
        """A one-line summary for logs."""
        c = self.config
        noise = f", noise {c.noise_len}" if c.noise_len else ""
        return (
            f"kv: {c.num_pairs} pairs, key {c.key_len} / value {c.value_len} chars, "
            f"alphabet {c.alphabet_size}{noise}, context {c.context_len} tokens"
        )
