"""A bAbI checkpoint through the command line: eval on a plain-English question file, write a story,
ask plain questions (laid out as the task lays out its own), with the layout applied exactly once."""

from __future__ import annotations

import json

import pytest
import torch

from gradmem.cli.main import main
from gradmem.core.batch import pad_right
from gradmem.core.memory_file import load_memory
from gradmem.core.sequence import generated_rows
from gradmem.run.checkpoint import load_checkpoint

STORY = "Mary moved to the bathroom. John went to the hallway. Mary travelled to the office."
SPEC = {
    "task": {"name": "babi", "task": 1, "tokenizer": {"type": "word", "vocab": "babi"}},
    "backbone": {"name": "llama", "num_layers": 1, "num_heads": 2, "hidden_size": 16, "intermediate_size": 32},
    "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
    "train": {"steps": 1, "batch_size": 4, "eval_examples": 8, "device": "cpu"},
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("babi")
    (root / "spec.json").write_text(json.dumps(SPEC))
    assert main(["train", "--config", str(root / "spec.json"), "--out", str(root / "run")]) == 0
    return root / "run" / "last"


def test_eval_scores_a_plain_english_question_file(checkpoint, tmp_path, capsys):
    lines = [
        {"context": STORY, "question": "Where is Mary?", "answer": "office"},
        {"context": STORY, "question": "Where is John?", "answer": "hallway"},
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert main(["eval", str(checkpoint), "--data", str(data), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 2 and 0.0 <= result["exact_match"] <= 1.0
    data.write_text(json.dumps({"context": STORY, "question": "Where is Zorro?", "answer": "office"}) + "\n")
    assert main(["eval", str(checkpoint), "--data", str(data), "--device", "cpu"]) == 2
    assert "'Zorro'" in capsys.readouterr().err  # the unknown word, named


def test_write_a_story_then_ask_plain_questions(checkpoint, tmp_path, capsys):
    story = tmp_path / "story.txt"
    story.write_text(STORY + "\n")
    store = ["--store", str(tmp_path / "store"), "--device", "cpu"]
    assert main(["write", str(checkpoint), "--context", str(story), "--out", str(tmp_path / "mem"), *store]) == 0
    capsys.readouterr()
    questions = ["Where is Mary?", "Where is John?"]
    assert (
        main(
            ["ask", str(checkpoint), "--memory", str(tmp_path / "mem"), "-q", questions[0], "-q", questions[1], *store]
        )
        == 0
    )
    answers = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [a["query"] for a in answers] == questions
    model, task, _ = load_checkpoint(checkpoint)
    memory, _ = load_memory(tmp_path / "mem", model)
    ids = [task.tokenizer.encode(f"\nQuestion: {q}\nAnswer:") for q in questions]  # the task's own layout
    with torch.no_grad():  # the answers by hand: greedy decode from the memory file, cut at EOS
        out = model.generate(memory.repeat(2), pad_right(ids), 8, task.tokenizer.eos_id)
    assert [a["answer"] for a in answers] == [
        task.tokenizer.decode(r) for r in generated_rows(out, task.tokenizer.eos_id)
    ]
    assert main(["ask", str(checkpoint), "--memory", str(tmp_path / "mem"), "-q", "Where is Zorro?", *store]) == 2
    assert "'Zorro'" in capsys.readouterr().err
