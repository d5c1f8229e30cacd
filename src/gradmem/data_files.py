"""Examples from a user's JSONL file, for `gradmem eval --data`.

Two kinds of line are read, one JSON object per line:
- strings, tokenised with the task's tokenizer and scored as the task's own splits:
  {"context": "!ab:cd!!ef:gh!|", "query": "?!ab:", "target": "cd!|"}
- token ids, as `gradmem data` writes them: {"context": [...], "query": [...], "target": [...], "answer_len": 2}
A line that does not fit (bad JSON, a missing field, a character the tokenizer does not know, ids
outside the vocabulary, too many tokens for the model) raises a ValueError naming its line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradmem.data import Example
from gradmem.tokenizers import unknown_characters

TEXT_FIELDS = ("context", "query", "target")


def load_examples(path: str | Path, task: Any, max_tokens: int | None = None) -> list[Example]:
    """Every example of `path`; `task` tokenises string lines (its `encode_strings`).

    `max_tokens`: the most tokens the model takes after its memory (`MemoryModel.max_sequence_tokens`),
    for the context and for query + target alike; None = no limit.
    """
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                example = _parse(json.loads(line), task)
                _check_fits(example, task.tokenizer.vocab_size, max_tokens)
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{number}: {err}") from None
            examples.append(example)
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def _parse(record: Any, task: Any) -> Example:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [name for name in TEXT_FIELDS if name not in record]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a line needs {list(TEXT_FIELDS)} (+ answer_len for token ids)")
    if all(isinstance(record[name], str) for name in TEXT_FIELDS):
        extra = sorted(set(record) - set(TEXT_FIELDS))
        if extra:
            raise ValueError(f"unknown field(s) {extra} in a text line; fields: {list(TEXT_FIELDS)}")
        return _encode(task, record)
    if all(isinstance(record[name], list) for name in TEXT_FIELDS):
        return Example(**record)  # Example checks the fields and answer_len
    raise ValueError(f"{list(TEXT_FIELDS)} must all be strings or all be lists of token ids")


def _encode(task: Any, record: dict[str, str]) -> Example:
    tokenizer = task.tokenizer
    for name in TEXT_FIELDS:
        if not record[name].strip():
            raise ValueError(f"{name} is empty")
        if tokenizer.unk_id is not None and tokenizer.unk_id in tokenizer.encode(record[name]):
            named = unknown_characters(tokenizer, record[name]) or ["some words"]
            raise ValueError(f"{name} has characters outside the tokenizer's vocabulary: {', '.join(named)}")
    return task.encode_strings(record["context"], record["query"], record["target"])


def _check_fits(example: Example, vocab_size: int, max_tokens: int | None) -> None:
    for name in TEXT_FIELDS:
        ids = getattr(example, name)
        if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
            raise ValueError(f"{name} has token ids outside the vocabulary (0..{vocab_size - 1})")
    if max_tokens is None:
        return
    if len(example.context) > max_tokens:
        raise ValueError(f"context has {len(example.context)} tokens; the model writes at most {max_tokens}")
    if len(example.query) + len(example.target) > max_tokens:
        raise ValueError(f"query + target have {len(example.query) + len(example.target)} tokens; "
                         f"the model reads at most {max_tokens}")
