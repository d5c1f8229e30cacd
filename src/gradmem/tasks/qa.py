"""Question answering on your own data: JSONL files of {"context", "question", "answer"} strings.

One line per question:
    {"context": "Mary went to the kitchen. John took the apple.", "question": "Where is Mary?", "answer": "kitchen"}
`"answers": ["...", ...]` (several ground truths) may stand in place of `"answer"`; the first one
is the training target. Examples are laid out as the SQuAD task lays them out (query
"\\nQuestion: ...\\nAnswer:", target " answer" + EOS) and tokenised with any Hugging Face tokenizer;
free-text answers are scored with SQuAD's EM and F1 (gradmem.evaluation.text_eval).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gradmem.core.batch import QUESTION_LAYOUT, Example
from gradmem.core.bounded_io import DATA_LIMIT, read_limited_text, text_lines
from gradmem.core.task import SPLITS, answer_example
from gradmem.tasks.squad import SquadItem, sample_questions, squad_example


@dataclass
class QAConfig:
    """Where the question files are and how to tokenise them."""

    train: str | None = None  # JSONL of training questions
    valid: str | None = None  # JSONL of validation questions (evaluation during training)
    test: str | None = None  # JSONL of test questions
    tokenizer: dict[str, Any] | None = (
        None  # e.g. {"type": "hf", "pretrained": "smollm2-135m"} or {"type": "hf", "path": DIR}
    )


def load_questions(path: str | Path) -> list[SquadItem]:
    """Every question of a JSONL file; a line that does not fit raises a ValueError naming it."""
    text = read_limited_text(Path(path).expanduser(), DATA_LIMIT, f"question file {path}")
    return questions_from_lines(text_lines(text), path)


def questions_from_lines(lines: list[str], path: str | Path) -> list[SquadItem]:
    """`load_questions` of a file already read (`path` names it in errors)."""
    items = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                items.append(_question(json.loads(line), f"{Path(path).name}:{number}"))
            except (json.JSONDecodeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}:{number}: {err}") from None
    if not items:
        raise ValueError(f"{path}: no questions")
    return items


def _question(record: Any, where: str) -> SquadItem:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    answers = record.get("answers", [record["answer"]] if "answer" in record else None)
    if answers is None or "context" not in record or "question" not in record:
        raise ValueError('a line needs "context", "question" and "answer" (or "answers")')
    texts = [record["context"], record["question"], *answers] if isinstance(answers, list) else []
    if not answers or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError("context, question and every answer must be non-empty strings")
    return SquadItem(where, record["context"], record["question"], tuple(answers), -1)


class QATask:
    """Your own question files for the task registry (see the module docstring)."""

    name = "qa"
    question_layout = QUESTION_LAYOUT  # what `gradmem ask` wraps a plain question in

    def example(self) -> tuple[str, list[str]]:
        """A short paragraph and a plain question about it, for the web page."""
        return "The Eiffel Tower was finished in 1889 in Paris.", ["When was the Eiffel Tower finished?"]

    def __init__(self, config: QAConfig | None = None, **overrides: Any) -> None:
        from gradmem.tasks.tokenizers import build_tokenizer

        self.config = replace(config or QAConfig(), **overrides)
        if not any((self.config.train, self.config.valid, self.config.test)):
            raise ValueError(
                "the qa task needs at least one of train / valid / test: JSONL files of "
                '{"context", "question", "answer"} lines'
            )
        self.tokenizer = build_tokenizer(self.config.tokenizer)
        self._items: dict[str, list[SquadItem]] = {}

    def items(self, split: str) -> list[SquadItem]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        path = getattr(self.config, split)
        if path is None:
            raise ValueError(f"the qa task has no {split} file (set task.{split})")
        if split not in self._items:
            self._items[split] = load_questions(path)
        return self._items[split]

    def sample(self, split: str, num_examples: int, seed: int) -> list[SquadItem]:
        return sample_questions(self.items(split), split, num_examples, seed)

    def to_example(self, item: SquadItem) -> Example:
        return squad_example(self.tokenizer, item.context, item.question, item.answers[0])

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        return [self.to_example(item) for item in self.sample(split, num_examples, seed)]

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """An example from text already laid out (query "\\nQuestion: ...\\nAnswer:", target " answer")."""
        return answer_example(self.tokenizer, context, query, target)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    def describe(self) -> str:
        files = ", ".join(f"{s} {Path(p).name}" for s in SPLITS if (p := getattr(self.config, s)))
        return f"qa: your questions ({files})"
