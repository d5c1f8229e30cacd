"""Examples from a user's JSONL file, for `gradmem eval --data`.

Three kinds of line are read, one JSON object per line:
- strings, tokenised with the task's tokenizer and scored as the task's own splits:
  {"context": "!ab:cd!!ef:gh!|", "query": "?!ab:", "target": "cd!|"}
- token ids, as `gradmem data` writes them: {"context": [...], "query": [...], "target": [...], "answer_len": 2}
- questions with free-text answers (a file of these only; gradmem.tasks.qa), laid out as the QA
  tasks lay them out and also scored by SQuAD EM / F1 of generated answers:
  {"context": "...", "question": "...", "answer": "..."} (or "answers": [...])
A line that does not fit (bad JSON, a missing field, a character the tokenizer does not know, ids
outside the vocabulary, too many tokens for the model) raises a ValueError naming its line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradmem.core.batch import Example
from gradmem.core.bounded_io import DATA_LIMIT, read_limited_text, text_lines
from gradmem.core.task import Task, Tokenizer
from gradmem.tasks.qa import questions_from_lines
from gradmem.tasks.squad import squad_example
from gradmem.tasks.tokenizers import unknown_characters

TEXT_FIELDS = ("context", "query", "target")


@dataclass
class DataFile:
    """The examples of a data file, and the answer texts when it holds free-text questions."""

    examples: list[Example]
    answers: list[tuple[str, ...]] | None = None  # ground truths per example, for EM / F1; None otherwise


def load_data_file(path: str | Path, task: Task, max_tokens: int | None = None) -> DataFile:
    """Every example of `path`, tokenised with `task`'s tokenizer (see the module docstring).

    `max_tokens`: the most tokens the model takes after its memory (`MemoryModel.max_sequence_tokens`),
    for the context and for query + target alike; None = no limit.
    """
    lines = text_lines(read_limited_text(path, DATA_LIMIT, f"data file {path}"))
    if _is_question_file(lines):
        items = questions_from_lines(lines, path)
        examples = []
        for item in items:
            try:
                for name, text in (("context", item.context), ("question", item.question), ("answer", item.answers[0])):
                    _check_known(task.tokenizer, name, text)
                example = squad_example(task.tokenizer, item.context, item.question, item.answers[0])
                _check_fits(example, task.tokenizer.vocab_size, max_tokens)
            except ValueError as err:
                raise ValueError(f"{path}:{item.id.rsplit(':', 1)[-1]}: {err}") from None
            examples.append(example)
        return DataFile(examples, [item.answers for item in items])
    return DataFile(examples_from_lines(lines, path, task, max_tokens))


def _is_question_file(lines: list[str]) -> bool:
    first = next((line for line in lines if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False  # load_examples names the line
    return isinstance(record, dict) and "question" in record


def load_examples(path: str | Path, task: Task, max_tokens: int | None = None) -> list[Example]:
    """Every context/query/target example of `path` (strings through `task.encode_strings`, or ids)."""
    lines = text_lines(read_limited_text(path, DATA_LIMIT, f"data file {path}"))
    return examples_from_lines(lines, path, task, max_tokens)


def examples_from_lines(lines: list[str], path: str | Path, task: Task, max_tokens: int | None) -> list[Example]:
    """`load_examples` of a file already read (`path` names it in errors)."""
    examples = []
    for number, line in enumerate(lines, 1):
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


def _parse(record: Any, task: Task) -> Example:
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


def _encode(task: Task, record: dict[str, str]) -> Example:
    for name in TEXT_FIELDS:
        if not record[name].strip():
            raise ValueError(f"{name} is empty")
        _check_known(task.tokenizer, name, record[name])
    return task.encode_strings(record["context"], record["query"], record["target"])


def _check_known(tokenizer: Tokenizer, name: str, text: str) -> None:
    if tokenizer.unk_id is not None and tokenizer.unk_id in tokenizer.encode(text):
        named = unknown_characters(tokenizer, text) or ["some words"]
        # `unknown_characters` names words for a word tokenizer, characters for the others.
        raise ValueError(f"{name} has words or characters outside the tokenizer's vocabulary: {', '.join(named)}")


def _check_fits(example: Example, vocab_size: int, max_tokens: int | None) -> None:
    for name in TEXT_FIELDS:
        ids = getattr(example, name)
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
            raise ValueError(f"{name} has token ids outside the vocabulary (0..{vocab_size - 1})")
    if max_tokens is None:
        return
    if len(example.context) > max_tokens:
        raise ValueError(f"context has {len(example.context)} tokens; the model writes at most {max_tokens}")
    if len(example.query) + len(example.target) > max_tokens:
        raise ValueError(
            f"query + target have {len(example.query) + len(example.target)} tokens; "
            f"the model reads at most {max_tokens}"
        )
