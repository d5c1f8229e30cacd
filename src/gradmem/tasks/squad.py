"""SQuAD v1.1: the JSON loader, the Short-SQuAD transform and the official EM / F1 normalisation.

Short SQuAD (the paper's setting) keeps only the sentence(s) of the paragraph that hold the answer
span, so contexts are ~40 tokens. Scoring follows the SQuAD v1.1 evaluation script's rules:
lower-case, drop punctuation and the articles a / an / the, collapse whitespace; EM and token F1
take the best over the ground-truth answers. No SQuAD data ships here: give the official file
(`train-v1.1.json` / `dev-v1.1.json`) with `data_path`.
"""

from __future__ import annotations

import json
import random
import re
import string
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gradmem.core.batch import QUESTION_LAYOUT, Example
from gradmem.core.task import SPLITS, Tokenizer, answer_example, split_seed

ABBREVIATIONS = {"dr.", "mr.", "mrs.", "ms.", "st.", "prof.", "jr.", "sr.", "vs.", "etc.", "e.g.", "i.e.", "no.", "mt."}
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


@dataclass(frozen=True)
class SquadItem:
    """One question with its paragraph and answers (the first answer is the training target)."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    answer_start: int  # character offset of the first answer in `context`


def load_squad(path: str | Path) -> list[SquadItem]:
    """Every question of a SQuAD v1.1 JSON file, in file order."""
    data = json.loads(Path(path).expanduser().read_text(encoding="utf-8-sig"))
    if "data" not in data:
        raise ValueError(f"{path} is not a SQuAD file (no 'data' key)")
    items = []
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = qa.get("answers") or []
                if not answers:
                    continue  # v2.0-style unanswerable questions have no span
                items.append(
                    SquadItem(
                        str(qa["id"]),
                        paragraph["context"],
                        qa["question"],
                        tuple(a["text"] for a in answers),
                        int(answers[0]["answer_start"]),
                    )
                )
    return items


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of the sentences of `text` (split after . ! ? before a capital)."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        if text[: match.start()].rsplit(None, 1)[-1].lower() in ABBREVIATIONS:
            continue  # "Dr. Vos" does not end a sentence
        spans.append((start, match.start() + len(match.group(0).rstrip())))
        start = match.end()
    spans.append((start, len(text)))
    return [(s, e) for s, e in spans if text[s:e].strip()]


def short_context(item: SquadItem) -> tuple[str, int]:
    """Short SQuAD: the sentence(s) overlapping the first answer span, and the span's new offset."""
    begin, end = item.answer_start, item.answer_start + len(item.answers[0])
    kept = [(s, e) for s, e in sentence_spans(item.context) if s < end and e > begin]
    s, e = kept[0][0], kept[-1][1]
    return item.context[s:e].strip(), begin - s - (len(item.context[s:e]) - len(item.context[s:e].lstrip()))


def shorten(item: SquadItem) -> SquadItem:
    """The item with its context cut to the answer's sentence(s); the answer stays inside."""
    context, start = short_context(item)
    return replace(item, context=context, answer_start=start)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Iterable[str], answers: Iterable[Iterable[str]]) -> dict[str, float]:
    """Mean EM and F1 (in %) over examples, each the max over that example's ground truths."""
    em = f1 = 0.0
    n = 0
    for prediction, truths in zip(predictions, answers):
        truths = list(truths)
        em += max(exact_match_score(prediction, t) for t in truths)
        f1 += max(f1_score(prediction, t) for t in truths)
        n += 1
    if n == 0:
        raise ValueError("squad_scores needs at least one example")
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n, "examples": float(n)}


@dataclass
class SquadConfig:
    """Where the SQuAD file is and how contexts are cut."""

    data_path: str | None = None  # SQuAD v1.1 JSON file (required)
    short: bool = True  # Short SQuAD: keep only the answer's sentence(s)
    valid_fraction: float = 0.05  # questions (by id hash) held out as valid, and as many as test
    tokenizer: dict[str, Any] | None = None  # e.g. {"type": "hf", "pretrained": "smollm2-135m"}

    def __post_init__(self) -> None:
        if not 0 < self.valid_fraction < 0.5:
            raise ValueError(f"valid_fraction must be in (0, 0.5), got {self.valid_fraction}")


def sample_questions(pool: list[SquadItem], split: str, num_examples: int, seed: int) -> list[SquadItem]:
    """`num_examples` of `pool` without replacement (all of them, shuffled, if fewer); a stream per
    (seed, split), so the splits of one seed never share draws."""
    rng = random.Random(split_seed(split, seed))
    return rng.sample(pool, min(num_examples, len(pool)))


def squad_example(tokenizer: Tokenizer, context: str, question: str, answer: str) -> Example:
    """A question laid out as the paper's extractive-QA tasks: the query "\nQuestion: ...\nAnswer:",
    the target " answer" then EOS, all of the answer scored."""
    return answer_example(tokenizer, context, QUESTION_LAYOUT.format(question=question), " " + answer)


class SquadTask:
    """(Short) SQuAD for the task registry. Splits are a fixed partition by question-id hash, so a
    user with one file (e.g. the dev set) still gets disjoint train / valid / test questions."""

    name = "squad"
    question_layout = QUESTION_LAYOUT  # what `gradmem ask` wraps a plain question in

    def example(self) -> tuple[str, list[str]]:
        """A short paragraph and a plain question about it, for the web page."""
        return "The Eiffel Tower was finished in 1889 in Paris.", ["When was the Eiffel Tower finished?"]

    def __init__(self, config: SquadConfig | None = None, **overrides: Any) -> None:
        from gradmem.tasks.tokenizers import build_tokenizer

        self.config = replace(config or SquadConfig(), **overrides)
        if self.config.data_path is None:
            raise ValueError("the squad task needs data_path: the SQuAD v1.1 JSON file (e.g. --set task.data_path=...)")
        self.tokenizer = build_tokenizer(self.config.tokenizer)
        self._items: dict[str, list[SquadItem]] | None = None

    def split_of(self, item: SquadItem) -> str:
        bucket = (zlib.crc32(item.id.encode()) % 10_000) / 10_000
        frac = self.config.valid_fraction
        return "valid" if bucket < frac else "test" if bucket < 2 * frac else "train"

    def items(self, split: str) -> list[SquadItem]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        if self._items is None:
            self._items = {s: [] for s in SPLITS}
            for item in load_squad(self.config.data_path):
                self._items[self.split_of(item)].append(shorten(item) if self.config.short else item)
        return self._items[split]

    def sample(self, split: str, num_examples: int, seed: int) -> list[SquadItem]:
        return sample_questions(self.items(split), split, num_examples, seed)

    def to_example(self, item: SquadItem) -> Example:
        return squad_example(self.tokenizer, item.context, item.question, item.answers[0])

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """An example from text laid out as the task lays it out (see `to_example`); EOS is added."""
        return answer_example(self.tokenizer, context, query, target)

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        return [self.to_example(item) for item in self.sample(split, num_examples, seed)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    def describe(self) -> str:
        return f"squad: {'Short SQuAD' if self.config.short else 'SQuAD'} from {self.config.data_path}"
