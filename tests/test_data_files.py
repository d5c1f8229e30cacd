"""`gradmem eval --data`: examples from a user's JSONL, as strings or token ids."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import tiny_model

from gradmem.core.batch import load_jsonl, save_jsonl
from gradmem.evaluation.evaluate import evaluate
from gradmem.tasks import BabiTask, KVTask
from gradmem.tasks.babi import BabiConfig, generate_stories, question_to_texts, story_questions
from gradmem.tasks.data_files import load_examples
from gradmem.tasks.kv import generate_kv, sample_kv_strings
from gradmem.tasks.tokenizers import word_tokenizer


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def kv_strings(task: KVTask, n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [dict(zip(("context", "query", "target"), sample_kv_strings(task.config, rng))) for _ in range(n)]


def test_string_lines_encode_exactly_as_the_task_does(tmp_path: Path) -> None:
    task = KVTask(num_pairs=2)
    strings = kv_strings(task, 20, seed=5)
    loaded = load_examples(write_lines(tmp_path / "s.jsonl", strings), task)
    # generate_kv draws the same strings from the same seed and tokenises them itself
    assert loaded == generate_kv(task.config, 20, seed=5, tokenizer=task.tokenizer)
    assert [e.answer_len for e in loaded] == [task.config.value_len] * 20  # the value, not the closing "!|"


def test_strings_and_token_ids_score_the_same(tmp_path: Path) -> None:
    task = KVTask(num_pairs=2)
    strings = kv_strings(task, 30, seed=1)
    ids_path = tmp_path / "ids.jsonl"
    save_jsonl([task.encode_strings(**s) for s in strings], ids_path)
    model = tiny_model()
    by_text = evaluate(model, load_examples(write_lines(tmp_path / "s.jsonl", strings), task), 16)
    by_ids = evaluate(model, load_examples(ids_path, task), 16)
    assert by_text == by_ids


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "Expecting property name"),
        ('["a", "b"]', "expected a JSON object"),
        ({"context": "!ab:cd!|", "query": "?!ab:"}, "missing field(s) ['target']"),
        ({"context": "!ab:cd!|", "query": "?!ab:", "target": "cd!|", "extra": 1}, "unknown field(s) ['extra']"),
        ({"context": "!ab:cé!|", "query": "?!ab:", "target": "cd!|"}, "U+00E9 'é'"),
        ({"context": "   ", "query": "?!ab:", "target": "cd!|"}, "context is empty"),
        ({"context": "!ab:cd!|", "query": "?!ab:", "target": "c"}, "shorter than the task's 2-character value"),
        ({"context": "!ab:cd!|" * 40, "query": "?!ab:", "target": "cd!|"}, "the model writes at most 100"),
        ({"context": [5, 6], "query": [7], "target": [9999, 2], "answer_len": 1}, "outside the vocabulary"),
        ({"context": [5, 6], "query": [7], "target": [True, 2], "answer_len": 1}, "outside the vocabulary"),
        ({"context": [5, 6], "query": [7], "target": [8, 2], "answer_len": 1.5}, "answer_len must be an integer"),
        ({"context": "!ab:cd!|", "query": [7], "target": "cd!|"}, "must all be strings or all be lists"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, line, message: str) -> None:
    good = {"context": "!ab:cd!|", "query": "?!ab:", "target": "cd!|"}
    path = write_lines(tmp_path / "bad.jsonl", [good, line])
    with pytest.raises(ValueError) as err:
        load_examples(path, KVTask(num_pairs=1), max_tokens=100)
    assert str(err.value).startswith(f"{path}:2: ")
    assert message in str(err.value)


def test_a_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    """Editors on Windows save UTF-8 with a BOM; the file reads as without one (ids and questions too)."""
    task = KVTask(num_pairs=2)
    plain = write_lines(tmp_path / "plain.jsonl", kv_strings(task, 5, seed=3))
    marked = tmp_path / "bom.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_examples(marked, task) == load_examples(plain, task)
    ids = tmp_path / "ids.jsonl"
    save_jsonl(load_examples(plain, task), ids)
    ids.write_bytes(b"\xef\xbb\xbf" + ids.read_bytes())
    assert load_jsonl(ids) == load_examples(plain, task)


def test_babi_strings_match_its_own_examples() -> None:
    questions = [q for story in generate_stories(BabiConfig(task=1), 5, seed=0) for q in story_questions(story)]
    tokenizer = word_tokenizer(" ".join(question_to_texts(q)) for q in questions)
    task = BabiTask(task=1, tokenizer=tokenizer.to_dict())
    for q in questions[:10]:
        assert task.encode_strings(*question_to_texts(q)) == task.to_example(q)
