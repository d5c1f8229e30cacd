"""Your own question files: the `qa` task, `gradmem eval --data` on free-text questions, EM / F1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from gradmem.cli.main import main
from gradmem.core.batch import Example
from gradmem.evaluation.text_eval import score_answers
from gradmem.run.build import build_model
from gradmem.run.checkpoint import save_checkpoint
from gradmem.tasks import QATask
from gradmem.tasks.data_files import load_data_file
from gradmem.tasks.qa import load_questions
from gradmem.tasks.squad import squad_example
from gradmem.tasks.tokenizers import word_tokenizer

LINES = [
    {"context": "Mary went to the kitchen . John took the apple .", "question": "Where is Mary ?", "answer": "kitchen"},
    {"context": "Sandra moved to the garden .", "question": "Where is Sandra ?", "answers": ["garden", "the garden"]},
    {"context": "Daniel journeyed to the office .", "question": "Where is Daniel ?", "answer": "office"},
]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_spec() -> dict:
    texts = [v for line in LINES for v in line.values() if isinstance(v, str)]
    return word_tokenizer(texts + ["Question Answer : garden the"]).to_dict()


def test_questions_load_with_one_or_several_answers(tmp_path):
    items = load_questions(write_lines(tmp_path / "q.jsonl", LINES))
    assert [i.answers for i in items] == [("kitchen",), ("garden", "the garden"), ("office",)]
    assert items[1].context == LINES[1]["context"] and items[1].question == "Where is Sandra ?"


def test_a_question_file_with_a_byte_order_mark_loads(tmp_path):
    (tmp_path / "plain").mkdir(), (tmp_path / "marked").mkdir()
    plain = write_lines(tmp_path / "plain" / "q.jsonl", LINES)  # same name: an item's id holds the file name
    marked = tmp_path / "marked" / "q.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_questions(marked) == load_questions(plain)


@pytest.mark.parametrize(
    "line, message",
    [
        ({"context": "x", "question": "y"}, 'needs "context", "question" and "answer"'),
        ({"context": "x", "question": "y", "answer": "  "}, "non-empty strings"),
        ({"context": "x", "question": "y", "answers": []}, "non-empty strings"),
        ('"just a string"', "expected a JSON object"),
    ],
)
def test_a_bad_question_line_is_named(tmp_path, line, message):
    path = write_lines(tmp_path / "q.jsonl", [LINES[0], line])
    with pytest.raises(ValueError, match=message) as err:
        load_questions(path)
    assert str(err.value).startswith(f"{path}:2: ")


def test_qa_task_splits_and_layout(tmp_path, tokenizer_spec):
    path = write_lines(tmp_path / "q.jsonl", LINES)
    task = QATask(train=str(path), tokenizer=tokenizer_spec)
    examples = task.make_split("train", 10, seed=0)  # asks for more than there are: each question once
    assert len(examples) == 3
    expected = {
        tuple(squad_example(task.tokenizer, i.context, i.question, i.answers[0]).target) for i in task.items("train")
    }
    assert {tuple(e.target) for e in examples} == expected
    assert all(e.target[-1] == task.tokenizer.eos_id and e.answer_len == len(e.target) - 1 for e in examples)
    with pytest.raises(ValueError, match="no valid file"):
        task.make_split("valid", 1, seed=0)
    with pytest.raises(ValueError, match="at least one of train / valid / test"):
        QATask(tokenizer=tokenizer_spec)


def test_eval_data_scores_free_text_answers(tmp_path, tokenizer_spec, capsys):
    path = write_lines(tmp_path / "q.jsonl", LINES)
    spec = {
        "task": {"name": "qa", "test": str(path), "tokenizer": tokenizer_spec},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": {},
    }
    torch.manual_seed(0)
    model = build_model(spec)
    save_checkpoint(tmp_path / "ck", model, spec)
    data = load_data_file(path, QATask(test=str(path), tokenizer=tokenizer_spec), model.max_sequence_tokens)
    assert data.answers == [("kitchen",), ("garden", "the garden"), ("office",)]
    assert main(["eval", str(tmp_path / "ck"), "--data", str(path), "--generate", "--batch-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 3.0 and "generated_exact_match" in result
    # the CLI's scores are SQuAD's EM / F1 (percent) of the answers this model generates from memory
    direct = score_answers(
        model.eval(),
        QATask(test=str(path), tokenizer=tokenizer_spec).tokenizer,
        data.examples,
        data.answers,
        batch_size=2,
    )
    assert (result["text_exact_match"], result["text_f1"]) == (direct["exact_match"], direct["f1"])


def test_free_text_answers_are_written_with_the_given_steps_and_lr(tmp_path, tokenizer_spec):
    path = write_lines(tmp_path / "q.jsonl", LINES)
    task = QATask(test=str(path), tokenizer=tokenizer_spec)
    spec = {
        "task": {"name": "qa", "test": str(path), "tokenizer": tokenizer_spec},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": {},
    }
    model = build_model(spec)
    data = load_data_file(path, task, model.max_sequence_tokens)
    seen, write = [], model.write
    model.write = lambda context, **kw: seen.append((kw["steps"], kw["lr"])) or write(context, **kw)
    score_answers(model, task.tokenizer, data.examples, data.answers, batch_size=2, steps=3, lr=0.25)
    assert seen == [(3, 0.25), (3, 0.25)]  # both batches of the three questions


def test_free_text_answers_may_be_longer_than_sixteen_tokens(tmp_path, tokenizer_spec):
    # a fixed 16-token cap scored every longer reference answer as wrong
    task = QATask(test=str(write_lines(tmp_path / "q.jsonl", LINES)), tokenizer=tokenizer_spec)
    spec = {
        "task": {"name": "qa", "test": "unused", "tokenizer": tokenizer_spec},
        "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": {},
    }
    model = build_model(spec)
    long = Example(context=[5, 6, 7], query=[8], target=[9] * 24, answer_len=23)
    lengths, generate = [], model.generate
    model.generate = lambda memory, query, max_new_tokens, *a: (
        lengths.append(max_new_tokens) or generate(memory, query, max_new_tokens, *a)
    )
    score_answers(model, task.tokenizer, [long], [("a long answer",)])
    assert lengths == [24]
