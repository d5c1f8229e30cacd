"""The word tokenizer over the bAbI generator's vocabulary, and bAbI task mixes (QA1-QA5 at once):
every generated word is known, unknown words are named, specs round trip, mixes are seeded and
validated, and a tiny model trains on the mix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, tiny_model

from gradmem.core.errors import InvalidInput
from gradmem.run.build import build_model, build_task
from gradmem.serve.engine import Engine, TaskText
from gradmem.serve.store import MemoryStore
from gradmem.tasks.babi import BabiConfig, BabiTask, generate_stories, question_to_texts
from gradmem.tasks.babi_format import BabiQuestion, format_babi, story_questions
from gradmem.tasks.babi_words import babi_vocabulary
from gradmem.tasks.data_files import load_data_file
from gradmem.tasks.tokenizers import SPECIAL_TOKENS, WordTokenizer, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
BABI_WORDS = {"type": "word", "vocab": "babi"}
MIX = [1, 2, 3, 4, 5]


def question_task(q: BabiQuestion) -> int:
    """Which of QA1-QA5 a generated question belongs to, from its template."""
    if q.question.startswith("Where was"):
        return 3
    if q.question.startswith("Where is the"):
        return 2
    if q.question.startswith("Where is"):
        return 1
    return 4 if re.search(r"\b(north|south|east|west)\b", q.question) else 5


def question_ids(task: BabiTask) -> list[int]:
    """The query ids of the task's own example for "Where is Mary?"."""
    q = BabiQuestion(
        statements=("Mary went to the kitchen.",), question="Where is Mary?", answer="kitchen", supporting=(0,)
    )
    return task.to_example(q).query


@pytest.fixture(scope="module")
def tok() -> WordTokenizer:
    return build_tokenizer(BABI_WORDS)


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_every_generated_word_is_in_the_babi_vocabulary(tok: WordTokenizer, task: int) -> None:
    words: set[str] = set()
    for story in generate_stories(BabiConfig(task=task), 2000, seed=task):
        for line in story:
            words.update(f"{line.text} {line.answer or ''}".split())
    # Distinct words only: encoding every question of 2000 stories would take seconds per task.
    assert tok.unknown(" ".join(sorted(words)), most=1000) == []
    q = story_questions(generate_stories(BabiConfig(task=task), 1, seed=0)[0])[-1]
    context, query, target = question_to_texts(q)
    for text in (context, query, target):
        assert tok.unk_id not in tok.encode(text), text
    assert tok.decode(tok.encode(query)) == f"Question : {q.question} Answer :"  # the layout's words


def test_the_vocabulary_is_exactly_what_the_generator_writes(tok: WordTokenizer) -> None:
    seen: set[str] = {"Question", "Answer", ":"}  # the layout of question_to_texts
    for task in MIX:
        for story in generate_stories(BabiConfig(task=task), 300, seed=0):
            for line in story:
                seen.update(p for p, _ in tok.tokenizer.pre_tokenizer.pre_tokenize_str(f"{line.text} {line.answer}"))
    seen.discard("None")  # statements have no answer
    assert set(babi_vocabulary()) == seen  # no word missing, none unused
    # Pinned: a change renumbers the ids that word-tokenized checkpoints were trained with.
    assert tok.vocab_size == len(SPECIAL_TOKENS) + 56 == 60


def test_ids_are_specials_then_sorted_words_and_answers_round_trip(tok: WordTokenizer) -> None:
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    words = sorted(babi_vocabulary())
    assert [tok.encode(w) for w in words] == [[i] for i in range(4, 4 + len(words))]
    ids = tok.encode(" garden")
    assert len(ids) == 1 and tok.decode(ids) == "garden"
    sentence = "Mary moved to the bathroom. Where is Mary?"
    assert tok.decode(tok.encode(sentence)) == sentence
    assert tok.decode([1, *ids, 2, 0]) == "garden" and tok.decode([*ids, 3], skip_special=False) == "garden [UNK]"


def test_unknown_words_are_named(tok: WordTokenizer, tmp_path: Path) -> None:
    text = "Marry went to the kitchen. Marry took the mary!"
    assert tok.unknown(text) == ["'Marry'", "'mary' (did you mean 'Mary'?)", "'!'"]  # distinct, in order
    assert tok.unknown(text, most=1) == ["'Marry'"] and tok.unknown("Mary went to the kitchen.") == []
    assert tok.unk_id in tok.encode(text)
    task = BabiTask(task=1, tokenizer=BABI_WORDS)
    line = {
        "context": "Marry went to the kitchen.",
        "query": "\nQuestion: Where is Mary?\nAnswer:",
        "target": " kitchen",
    }
    path = tmp_path / "lines.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(ValueError, match="context has words or characters outside the tokenizer's vocabulary: 'Marry'"):
        load_data_file(path, task)
    engine = Engine(tiny_model(), tok, MemoryStore(tmp_path / "store"))
    with pytest.raises(InvalidInput, match="outside the model's vocabulary: 'Marry'"):
        engine.encode_question("Where is Marry?")
    assert engine.encode_question("Where is Mary?") == tok.encode("Where is Mary?")  # the default: as typed
    laid_out = Engine(
        tiny_model(), tok, MemoryStore(tmp_path / "store"), text=TaskText.of(BabiTask(tokenizer=BABI_WORDS))
    )
    # a plain question is asked as the task's examples ask it, so `gradmem ask` takes "Where is Mary?"
    assert laid_out.encode_question(" Where is Mary? ") == tok.encode("\nQuestion: Where is Mary?\nAnswer:")
    assert laid_out.encode_question("Where is Mary?") == question_ids(BabiTask(tokenizer=BABI_WORDS))
    with pytest.raises(InvalidInput, match="outside the model's vocabulary: 'Marry'"):
        laid_out.encode_question("Where is Marry?")


def test_specs_rebuild_the_same_ids(tok: WordTokenizer) -> None:
    assert tok.to_dict() == BABI_WORDS
    again = build_tokenizer(json.loads(json.dumps(tok.to_dict())))
    text = "Fred gave the apple to Jeff.\nQuestion: Who received the apple?\nAnswer: Jeff"
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size
    spec = {"type": "word", "words": ["kitchen", "Mary", "kitchen", "."]}  # duplicates are harmless
    small = build_tokenizer(spec)
    assert small.to_dict() == spec and small.vocab_size == 7
    assert small.encode("Mary kitchen.") == [5, 6, 4]  # sorted: "." = 4 < "Mary" = 5 < "kitchen" = 6
    assert small.unknown("mary Kitchen garden") == [
        "'mary' (did you mean 'Mary'?)",
        "'Kitchen' (did you mean 'kitchen'?)",
        "'garden'",
    ]
    assert build_tokenizer(small.to_dict()).encode("Mary kitchen.") == [5, 6, 4]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"type": "word"}, "vocab"),
        ({"type": "word", "vocab": "babi", "words": ["a"]}, "vocab"),
        ({"type": "word", "vocab": "babi", "lower": True}, "vocab"),
        ({"type": "word", "vocab": "squad"}, "unknown word vocabulary 'squad'"),
        ({"type": "word", "words": []}, "non-empty list"),
        ({"type": "word", "words": "Mary"}, "non-empty list"),
        ({"type": "word", "words": ["two words"]}, "'two words' is not one word"),
        ({"type": "word", "words": ["bathroom."]}, "'bathroom.' is not one word"),
        ({"type": "word", "words": ["[PAD]"]}, "is not one word"),
        ({"type": "word", "words": [""]}, "is not one word"),
        ({"type": "word", "words": [3]}, "is not one word"),
    ],
)
def test_bad_word_specs_are_refused(spec: dict, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        build_tokenizer(spec)


def test_the_mix_config_builds_and_mixes_every_task() -> None:
    spec = json.loads((ROOT / "configs" / "babi_mix_cpu.json").read_text())
    task = build_task(spec)
    assert task.describe() == "babi: QA1+QA2+QA3+QA4+QA5, generated bAbI-style"
    assert isinstance(task.tokenizer, WordTokenizer) and task.tokenizer.vocab_size == 60
    assert {question_task(q) for q in task.questions("train", 200, seed=0)} == set(MIX)
    first = dict(spec["task"], **spec["train"]["curriculum"][0])
    stage = build_task({"task": first})
    assert {question_task(q) for q in stage.questions("train", 60, seed=0)} == set(MIX)
    examples = task.make_split("valid", 50, seed=0)
    assert all(task.tokenizer.unk_id not in e.context + e.query + e.target for e in examples)
    again = build_task({"task": json.loads(json.dumps(task.to_dict()))})  # what a checkpoint records
    assert again.to_dict() == task.to_dict() and again.make_split("valid", 50, seed=0) == examples


def test_the_same_seed_gives_the_same_mix() -> None:
    mix = BabiTask(task=MIX, tokenizer=BABI_WORDS)
    assert mix.questions("train", 100, seed=4) == mix.questions("train", 100, seed=4)
    assert mix.questions("train", 100, seed=4) != mix.questions("train", 100, seed=5)
    stories = generate_stories(BabiConfig(task=[2, 5]), 20, 1)
    assert stories == generate_stories(BabiConfig(task=[2, 5]), 20, 1)
    assert {question_task(q) for story in stories for q in story_questions(story)} == {2, 5}
    # A one-task list draws nothing: the same data as the plain task.
    assert generate_stories(BabiConfig(task=[3]), 10, 0) == generate_stories(BabiConfig(task=3), 10, 0)


@pytest.mark.parametrize(
    ("task", "match"),
    [
        ([], "at least one task"),
        ([1, 1, 2], "[1] repeated"),
        ([0, 1], "integers 1..5"),
        ([1, 6], "integers 1..5"),
        ([1, True], "integers 1..5"),
        ([1, "2"], "integers 1..5"),
        (True, "integers 1..5"),
        (6, "integers 1..5"),
        (1.0, "integers 1..5"),
        ("1", "integers 1..5"),
    ],
)
def test_bad_task_lists_are_refused(task: object, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        BabiConfig(task=task)  # type: ignore[arg-type]


def test_a_mix_pools_the_official_files_of_its_tasks(tmp_path: Path) -> None:
    for n in (1, 2):
        for split, seed in (("train", 0), ("test", 1)):
            stories = generate_stories(BabiConfig(task=n, questions_per_story=1), 10, seed=seed)
            (tmp_path / f"qa{n}_made-up_{split}.txt").write_text(format_babi(stories))
    mix = BabiTask(task=[1, 2], data_path=str(tmp_path), tokenizer=BABI_WORDS)
    test = mix.questions("test", 100, seed=0)
    assert len(test) == 20 and {question_task(q) for q in test} == {1, 2}
    assert len(mix.questions("train", 100, seed=0)) == 18 and len(mix.questions("valid", 100, seed=0)) == 2
    one_file = BabiTask(task=[1, 2], data_path=str(tmp_path / "qa1_made-up_test.txt"), tokenizer=BABI_WORDS)
    with pytest.raises(ValueError, match="data_path must be the release's folder"):
        one_file.questions("test", 10, seed=0)


def test_a_tiny_model_trains_on_the_mix(tmp_path: Path) -> None:
    from gradmem.training.trainer import Trainer

    backbone = {k: v for k, v in TINY.items() if k not in ("vocab_size", "max_positions")}
    spec = {
        "task": {"name": "babi", "task": MIX, "questions_per_story": 1, "tokenizer": BABI_WORDS},
        "backbone": {"name": "llama", **backbone, "max_positions": 1024},
        "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
        "train": {"steps": 3, "batch_size": 4, "eval_every": 3, "eval_examples": 4, "log_every": 1, "seed": 0},
    }
    torch.manual_seed(0)
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)
    record = trainer.train()
    losses = [r["loss"] for r in trainer.history if r["kind"] == "train"]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert 0.0 <= record["exact_match"] <= 1.0 and (tmp_path / "last" / "model.safetensors").exists()


@pytest.mark.parametrize("tasks", [1, 2, 3, 4, 5, MIX])
def test_the_page_example_is_a_story_of_the_task_in_its_vocabulary(tasks, tok: WordTokenizer) -> None:
    task = BabiTask(task=tasks, tokenizer=BABI_WORDS)
    context, questions = task.example()
    assert context and questions and tok.unknown(context) == [] and all(tok.unknown(q) == [] for q in questions)
    assert task.example() == (context, questions)  # seeded: the page shows the same story every time
    first = tasks[0] if isinstance(tasks, list) else tasks
    assert all(question_task(BabiQuestion((), q, "", ())) == first for q in questions)


@pytest.mark.parametrize("task", [1, 2, 3])
def test_short_moves_tell_the_same_stories_without_the_verb_phrase(tok: WordTokenizer, task: int) -> None:
    full = generate_stories(BabiConfig(task=task), 50, seed=3)
    short = generate_stories(BabiConfig(task=task, short_moves=True), 50, seed=3)
    moves = 0
    for a, b in zip(full, short, strict=True):
        assert [(x.answer, x.supporting) for x in a] == [(y.answer, y.supporting) for y in b]  # same questions
        for x, y in zip(a, b, strict=True):
            words = x.text.split()
            if x.answer is None and words[1:] != y.text.split()[1:]:  # a move: "Mary went to the kitchen."
                assert y.text == f"{words[0]} {words[-1]}"  # "Mary kitchen."
                moves += 1
            else:
                assert x.text == y.text
        assert tok.unk_id not in tok.encode(" ".join(y.text for y in b))
    assert moves > 100
