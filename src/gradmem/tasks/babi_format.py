"""The bAbI text format: reading real task files and writing generated stories in the same format.

A file is a sequence of stories. Every line starts with its number inside the story; numbering
restarts at 1 for a new story. A statement line is `N text`; a question line is
`N question<TAB>answer<TAB>supporting fact numbers (space separated)`:

    1 Mary moved to the bathroom.
    2 John went to the hallway.
    3 Where is Mary? \tbathroom\t1

Each question becomes one (context, question, answer) example whose context is the statements of
its story before it (questions are not part of the context).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BabiLine:
    """One line of a story: a statement, or a question with its answer and supporting facts."""

    text: str
    answer: str | None = None  # None for statements
    supporting: tuple[int, ...] = ()  # line numbers (1-based, within the story) of the supporting facts

    @property
    def is_question(self) -> bool:
        return self.answer is not None


Story = list[BabiLine]


@dataclass(frozen=True)
class BabiQuestion:
    """A question with the statements before it: one task example."""

    statements: tuple[str, ...]  # the context, in story order
    question: str
    answer: str
    supporting: tuple[int, ...]  # indices into `statements` (0-based)


def parse_babi(text: str) -> list[Story]:
    """Stories of a bAbI file's text; raises on a malformed line, naming its line number."""
    stories: list[Story] = []
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        number, _, rest = raw.partition(" ")
        if not number.isdigit():
            raise ValueError(f"line {n}: a bAbI line starts with its number: {raw!r}")
        if int(number) == 1:
            stories.append([])
        elif not stories or int(number) != len(stories[-1]) + 1:
            raise ValueError(f"line {n}: line number {number} does not continue its story")
        if "\t" in rest:
            fields = rest.split("\t")
            if len(fields) < 2:
                raise ValueError(f"line {n}: a question line needs question<TAB>answer[<TAB>facts]: {raw!r}")
            support = tuple(int(x) for x in fields[2].split()) if len(fields) > 2 else ()
            stories[-1].append(BabiLine(fields[0].strip(), fields[1].strip(), support))
        else:
            stories[-1].append(BabiLine(rest.strip()))
    return stories


def format_babi(stories: list[Story]) -> str:
    """The bAbI file text of `stories` (inverse of `parse_babi`)."""
    lines = []
    for story in stories:
        for i, line in enumerate(story, 1):
            if line.is_question:
                facts = " ".join(str(s) for s in line.supporting)
                lines.append(f"{i} {line.text} \t{line.answer}\t{facts}")
            else:
                lines.append(f"{i} {line.text}")
    return "\n".join(lines) + "\n"


def story_questions(story: Story) -> list[BabiQuestion]:
    """Every question of a story with the statements before it."""
    questions = []
    statements: list[str] = []
    index_of: dict[int, int] = {}  # story line number -> statement index
    for number, line in enumerate(story, 1):
        if line.is_question:
            support = tuple(index_of[s] for s in line.supporting if s in index_of)
            questions.append(BabiQuestion(tuple(statements), line.text, str(line.answer), support))
        else:
            index_of[number] = len(statements)
            statements.append(line.text)
    return questions


def find_babi_file(data_path: str | Path, task: int, split: str) -> Path:
    """The official file of bAbI task `task` and split ("train" or "test") under `data_path`.

    `data_path` is a folder holding files named like `qa1_single-supporting-fact_train.txt`
    (the `en/` or `en-10k/` folder of the release), or one such file.
    """
    path = Path(data_path).expanduser()
    if path.is_file():
        return path
    matches = sorted(path.glob(f"qa{task}_*_{split}.txt"))
    if not matches:
        raise FileNotFoundError(f"no bAbI file qa{task}_*_{split}.txt in {path}")
    return matches[0]
