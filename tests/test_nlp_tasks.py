"""The natural-language tasks: bAbI generator and parser, SQuAD loader / Short SQuAD / EM-F1, text
chunks; and every NLP task end to end on a tiny random Hugging Face Llama with a word tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gradmem.core.batch import collate
from gradmem.evaluation.evaluate import evaluate
from gradmem.evaluation.text_eval import evaluate_squad
from gradmem.run.build import build_model, build_task
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.tasks.babi import BabiConfig, BabiTask, generate_stories
from gradmem.tasks.babi_format import format_babi, parse_babi, story_questions
from gradmem.tasks.squad import exact_match_score, f1_score, load_squad, normalize_answer, shorten, squad_scores
from gradmem.tasks.tokenizers import build_tokenizer, word_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SQUAD = FIXTURES / "squad_mini.json"
BABI = FIXTURES / "babi_qa1_mini.txt"


# -- bAbI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [1, 2, 3, 4, 5])
def test_babi_generator_is_seeded_and_round_trips(task):
    cfg = BabiConfig(task=task)
    text = format_babi(generate_stories(cfg, 5, seed=3))
    assert text == format_babi(generate_stories(cfg, 5, seed=3))
    assert text != format_babi(generate_stories(cfg, 5, seed=4))
    assert format_babi(parse_babi(text)) == text
    for story in parse_babi(text):
        for number, line in enumerate(story, 1):
            if line.is_question:
                # Supporting facts are earlier statements (never questions) of the same story.
                assert line.supporting and all(
                    1 <= s < number and not story[s - 1].is_question for s in line.supporting
                )


@pytest.mark.parametrize("task", [1, 2, 4, 5])
def test_babi_answer_is_in_a_supporting_fact(task):
    for story in generate_stories(BabiConfig(task=task), 20, seed=0):
        for q in story_questions(story):
            assert any(q.answer in q.statements[i] for i in q.supporting), (q, task)


def test_babi_qa1_answers_are_the_last_move():
    for story in generate_stories(BabiConfig(task=1), 20, seed=1):
        for q in story_questions(story):
            person = q.question.split()[-1].rstrip("?")
            last = [s for s in q.statements if s.startswith(person + " ")][-1]
            assert last.endswith(f"the {q.answer}.")


def test_babi_parser_reads_the_official_format():
    stories = parse_babi(BABI.read_text())
    assert len(stories) == 2 and len(stories[0]) == 6
    questions = story_questions(stories[0])
    assert questions[1].statements == (
        "Mary moved to the bathroom.",
        "John went to the hallway.",
        "Daniel went back to the hallway.",
        "Sandra moved to the garden.",
    )
    assert (questions[1].question, questions[1].answer, questions[1].supporting) == (
        "Where is Daniel?",
        "hallway",
        (2,),
    )
    assert format_babi(stories) == BABI.read_text()
    with pytest.raises(ValueError, match="line 2"):
        parse_babi("1 Mary moved.\n3 John moved.\n")


def test_babi_task_reads_files(tmp_path):
    tok = word_tokenizer([BABI.read_text()])
    folder = tmp_path / "en"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"qa1_single-supporting-fact_{split}.txt").write_text(BABI.read_text())
    task = BabiTask(task=1, data_path=str(folder), tokenizer=tok.to_dict())
    examples = task.make_split("test", 10, seed=0)
    assert len(examples) == 4  # every question of the file, sampled without replacement
    answers = {tok.decode(e.target[: e.answer_len]) for e in examples}
    assert answers == {"bathroom", "hallway", "office", "bedroom"}
    assert "files at" in task.describe() and "generated" in BabiTask(tokenizer=tok.to_dict()).describe()


# -- SQuAD ------------------------------------------------------------------------------------------


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match_score("in 1841", "1841") == 0.0
    assert exact_match_score("An apple.", "apple") == 1.0
    assert f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)  # P = 1, R = 2/3
    assert f1_score("dog", "cat") == 0.0
    scores = squad_scores(["1841", "a dog"], [["in 1841", "1841"], ["the cat"]])
    assert scores["exact_match"] == pytest.approx(50.0) and scores["f1"] == pytest.approx(50.0)


def test_squad_loader_and_short_transform():
    items = load_squad(SQUAD)
    assert [i.id for i in items] == ["lh-1", "lh-2", "lh-3", "rv-1", "rv-2", "rv-3"]
    short = {i.id: shorten(i) for i in items}
    assert short["lh-2"].context == "It was built in 1841 by a local mason named Tobias Grey."
    assert short["lh-3"].context == "Today the tower is a small museum."
    assert short["rv-3"].context == "Dr. Lena Vos mapped its delta in 1907, and her maps are still used."
    for s in short.values():
        assert s.context[s.answer_start : s.answer_start + len(s.answers[0])] == s.answers[0]


# -- text -------------------------------------------------------------------------------------------


def text_files(tmp_path) -> list[str]:
    paths = []
    for n in range(3):
        path = tmp_path / f"play{n}.txt"
        path.write_text(" ".join(f"word{(7 * i + n) % 23} ." for i in range(120)))
        paths.append(str(path))
    return paths


def test_text_reconstruction_and_continuation_examples(tmp_path):
    files = text_files(tmp_path)
    tok = word_tokenizer([Path(f).read_text() for f in files])
    rec = build_task(
        {"task": dict(name="text", mode="reconstruction", chunk_tokens=16, files=files, tokenizer=tok.to_dict())}
    )
    e = rec.make_split("train", 4, seed=0)[0]
    assert len(e.context) == 16 and e.query == e.context[:1] and e.target == e.context[1:] and e.answer_len == 15
    assert rec.make_split("train", 4, seed=0) == rec.make_split("train", 4, seed=0)
    assert {tuple(x.context) for x in rec.make_split("test", 30, 0)} <= {tuple(x) for x in rec.windows("test", 30, 0)}
    cont = build_task(
        {
            "task": dict(
                name="text",
                mode="continuation",
                chunk_tokens=32,
                target_tokens=16,
                files=files,
                tokenizer=tok.to_dict(),
            )
        }
    )
    e = cont.make_split("valid", 2, seed=0)[0]
    assert len(e.context) == 32 and len(e.target) == 16 and e.query == e.context[-1:]


# -- end to end on a tiny random Llama ------------------------------------------------------------

TINY = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


def tiny_task_specs(tmp_path) -> dict[str, dict]:
    files = text_files(tmp_path)
    corpus = [format_babi(generate_stories(BabiConfig(task=t), 30, seed=0)) for t in range(1, 6)]
    corpus += [SQUAD.read_text(), "Question : Answer :"] + [Path(f).read_text() for f in files]
    tok = word_tokenizer(corpus).to_dict()
    return {
        "babi": {"name": "babi", "task": 2, "questions_per_story": 2, "tokenizer": tok},
        "squad": {"name": "squad", "data_path": str(SQUAD), "valid_fraction": 0.3, "tokenizer": tok},
        "text": {"name": "text", "chunk_tokens": 16, "files": files, "tokenizer": tok},
        "continuation": {
            "name": "text",
            "mode": "continuation",
            "chunk_tokens": 24,
            "target_tokens": 8,
            "files": files,
            "tokenizer": tok,
        },
    }


CASES = [
    ("babi", "gradmem"),
    ("babi", "full_context"),
    ("babi", "no_context"),
    ("squad", "gradmem"),
    ("text", "gradmem"),
    ("continuation", "gradmem"),
]


@pytest.mark.parametrize("name,method", CASES)
def test_every_nlp_task_runs_end_to_end(tmp_path, name, method):
    task_spec = tiny_task_specs(tmp_path)[name]
    vocab = build_tokenizer(task_spec["tokenizer"]).vocab_size
    spec = {
        "task": task_spec,
        "backbone": {"name": "hf", "config": {**TINY, "vocab_size": vocab}, "freeze": True},
        "method": {"name": method, **({"num_memory": 2, "write": {"steps": 1}} if method == "gradmem" else {})},
    }
    torch.manual_seed(0)
    task = build_task(spec)
    model = build_model(spec, task)
    examples = task.make_split("train", 3, seed=0)
    out = model(collate(examples, task.tokenizer.pad_id))
    assert torch.isfinite(out.loss)
    if method == "gradmem":
        out.loss.backward()
        assert model.method.memory0.grad is not None
    result = evaluate(
        model,
        examples,
        3,
        pad_id=task.tokenizer.pad_id,
        generate=name in ("babi", "squad"),
        eos_id=task.tokenizer.eos_id,
    )
    model.eval()
    with torch.no_grad():  # the scores by hand from one READ: argmax against the target tokens
        batch = collate(examples, task.tokenizer.pad_id)
        read = model.read(model.write(batch.context), batch.query, batch.target)
    hits = read.logits.argmax(-1).eq(batch.target.ids) & batch.target.mask  # (B, T)
    assert result["token_accuracy"] == pytest.approx(hits.sum().item() / batch.target.mask.sum().item())
    assert result["loss"] == pytest.approx(read.per_example_loss.mean().item(), rel=1e-5)
    if name == "squad":
        items = task.sample("train", 3, seed=0)
        scores = evaluate_squad(model, task, items, max_new_tokens=3)
        by_hand = [max(f1_score(p, a) for a in item.answers) for p, item in zip(scores["predictions"], items)]
        assert len(scores["predictions"]) == 3 and scores["f1"] == pytest.approx(100 * sum(by_hand) / 3)
    save_checkpoint(tmp_path / "ckpt", model, spec)  # the spec records the tokenizer, inline
    loaded, loaded_task, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded_task.tokenizer.encode("Question : Answer") == task.tokenizer.encode("Question : Answer")
    loaded.eval(), model.eval()
    with torch.no_grad():
        batch = collate(examples, task.tokenizer.pad_id)
        torch.testing.assert_close(loaded(batch).loss, model(batch).loss)
