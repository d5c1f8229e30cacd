"""bAbI QA1-QA5: a seeded generator of bAbI-style stories, and the task over generated or real files.

The real bAbI tasks come from a simulator that is not shipped in any package here, so this module
generates stories of the same five kinds, in the original text format (see `babi_format`):
  QA1 single supporting fact   "Mary moved to the bathroom."        "Where is Mary?"
  QA2 two supporting facts     "John picked up the milk." + a move  "Where is the milk?"
  QA3 three supporting facts   object carried through two places    "Where was the milk before the office?"
  QA4 two-argument relations   "The office is north of the garden." "What is north of the garden?"
  QA5 three-argument relations "Fred gave the apple to Jeff."       "Who gave the apple to Jeff?"
Generated data is NOT the bAbI benchmark: results on it must be labelled "generated bAbI-style".
With `data_path`, the task reads the official files instead (train = first 90% of the train file's
stories, valid = the last 10%, test = the test file).

`task` may also be a list of tasks (a mix, e.g. [1, 2, 3, 4, 5]): every generated story is of a task
drawn uniformly from the list with the story's own random generator, so one seed still gives one
data set; with `data_path` the questions of every listed task's files are pooled. Questions are
drawn per story, so a QA4 story (always one question) adds fewer questions than the others.

`babi_vocabulary()` is every word the generator writes (and the question layout of
`question_to_texts`): the closed vocabulary of the word tokenizer `{"type": "word", "vocab": "babi"}`
(gradmem.tasks.tokenizers.WordTokenizer) that small models trained from scratch use.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from gradmem.core.batch import QUESTION_LAYOUT, Example
from gradmem.core.task import Task, answer_example, split_seed
from gradmem.tasks.babi_format import BabiLine, BabiQuestion, Story, find_babi_file, parse_babi, story_questions
from gradmem.tasks.babi_words import (
    DIRECTIONS,
    DROPS,
    GIVERS,
    GIVES,
    GRABS,
    MOVES,
    OBJECTS,
    PEOPLE,
    PLACES,
)

# Statements between questions, per task (QA3 needs an object carried through two places).
DEFAULT_STATEMENTS = {1: 2, 2: 3, 3: 4, 4: 2, 5: 2}


def _task_list(task: Task) -> list[int]:
    """The tasks of a `BabiConfig.task` value (one task or a mix); ValueError naming what is wrong."""
    tasks = list(task) if isinstance(task, (list, tuple)) else [task]
    if isinstance(task, (list, tuple)) and not tasks:
        raise ValueError("a bAbI task mix needs at least one task, e.g. [1, 2, 3, 4, 5]; got []")
    bad = [t for t in tasks if isinstance(t, bool) or not isinstance(t, int) or t not in range(1, 6)]
    if bad:
        raise ValueError(f"bAbI tasks are integers 1..5 (QA1-QA5) or a list of them; got {task!r} ({bad!r} invalid)")
    repeated = sorted({t for t in tasks if tasks.count(t) > 1})
    if repeated:
        raise ValueError(f"a bAbI task mix lists each task once; {repeated} repeated in {task!r}")
    return tasks


@dataclass
class BabiConfig:
    """Which bAbI task, generated or read from the official files."""

    task: int | list[int] = 1  # 1..5 (QA1-QA5), or a list of distinct ones: a uniform mix per story
    data_path: str | None = None  # folder (or file) of the official release; None = generate
    questions_per_story: int = 5  # generated stories: questions asked per story (QA4: always 1)
    statements_per_question: int | None = None  # generated: statements before each question; None = per-task default
    tokenizer: dict[str, Any] | None = None  # e.g. {"type": "hf", "pretrained": "smollm2-135m"}
    short_moves: bool = False  # generated: "Mary kitchen." for "Mary moved to the kitchen." (a curriculum aid)

    def __post_init__(self) -> None:
        tasks = _task_list(self.task)
        if isinstance(self.task, tuple):
            self.task = tasks  # a list, as JSON reads it back: to_dict round trips
        if self.questions_per_story < 1 or (self.statements_per_question or 1) < 1:
            raise ValueError("questions_per_story and statements_per_question must be >= 1")


class _World:
    """The state a generated story needs to answer its questions (who is where, who holds what).

    With `short_moves` a move is written without its verb phrase, "Mary kitchen.": the name right
    before its place. A decoder trained from scratch on full context binds people to places in
    ~2000 steps on that text and then carries the binding over to the full sentences, where the
    3-4 words between name and place keep it on the "most recent place" shortcut (docs/results.md).
    The verb is drawn either way, so both texts tell the same stories.
    """

    def __init__(self, rng: random.Random, short_moves: bool = False) -> None:
        self.rng = rng
        self.short_moves = short_moves
        self.lines: Story = []
        self.person_at: dict[str, tuple[str, int]] = {}  # person -> (place, line number)
        self.holder: dict[str, tuple[str, int]] = {}  # object -> (person, grab line)
        self.dropped: dict[str, tuple[str, tuple[int, ...]]] = {}  # object -> (place, support)
        self.trail: dict[str, list[tuple[str, tuple[int, ...]]]] = {}  # object -> places it has been
        self.gives: list[tuple[str, str, str, int]] = []  # (giver, object, receiver, line)

    def add(self, text: str) -> int:
        self.lines.append(BabiLine(text))
        return len(self.lines)

    def ask(self, question: str, answer: str, support: tuple[int, ...]) -> None:
        self.lines.append(BabiLine(question, answer, tuple(sorted(set(support)))))

    def move(self) -> None:
        person = self.rng.choice(PEOPLE)
        place = self.rng.choice([p for p in PLACES if p != self.person_at.get(person, ("",))[0]])
        verb = self.rng.choice(MOVES)
        line = self.add(f"{person} {place}." if self.short_moves else f"{person} {verb} the {place}.")
        self.person_at[person] = (place, line)
        for obj, (holder, grab) in self.holder.items():
            if holder == person:
                self.trail[obj].append((place, (grab, line)))

    def object_place(self, obj: str) -> tuple[str, tuple[int, ...]] | None:
        if obj in self.holder:
            person, grab = self.holder[obj]
            if person not in self.person_at:
                return None
            place, line = self.person_at[person]
            return place, (grab, line)
        return self.dropped.get(obj)

    def handle_object(self) -> None:
        """Grab a free object where a person stands, or drop a held one; otherwise move someone."""
        options: list[Callable[[], None]] = []
        for person, (place, _) in self.person_at.items():
            for obj in OBJECTS:
                free = obj not in self.holder and self.dropped.get(obj, (place,))[0] == place
                if free:
                    options.append(lambda p=person, o=obj: self._grab(p, o))
        for obj in self.holder:
            options.append(lambda o=obj: self._drop(o))
        (self.rng.choice(options) if options else self.move)()

    def _grab(self, person: str, obj: str) -> None:
        line = self.add(f"{person} {self.rng.choice(GRABS)} the {obj}.")
        self.holder[obj] = (person, line)
        self.dropped.pop(obj, None)
        place, moved = self.person_at[person]
        trail = self.trail.setdefault(obj, [])
        if not trail or trail[-1][0] != place:
            trail.append((place, (line, moved)))

    def _drop(self, obj: str) -> None:
        person, _ = self.holder.pop(obj)
        line = self.add(f"{person} {self.rng.choice(DROPS)} the {obj}.")
        place, moved = self.person_at[person]
        self.dropped[obj] = (place, (line, moved))

    def give(self) -> None:
        giver, receiver = self.rng.sample(GIVERS, 2)
        obj = self.rng.choice(OBJECTS)
        line = self.add(f"{giver} {self.rng.choice(GIVES)} the {obj} to {receiver}.")
        self.gives.append((giver, obj, receiver, line))


def _question(task: int, world: _World) -> bool:
    """Ask one question of `task`'s kind about the world, if one is answerable; returns success."""
    rng = world.rng
    if task == 1:
        if not world.person_at:
            return False
        person = rng.choice(sorted(world.person_at))
        place, line = world.person_at[person]
        world.ask(f"Where is {person}?", place, (line,))
    elif task == 2:
        known = [(o, world.object_place(o)) for o in OBJECTS]
        known = [(o, p) for o, p in known if p is not None]
        if not known:
            return False
        obj, (place, support) = rng.choice(known)
        world.ask(f"Where is the {obj}?", place, support)
    elif task == 3:
        ready = [o for o, trail in world.trail.items() if len(trail) >= 2]
        if not ready:
            return False
        obj = rng.choice(sorted(ready))
        (before, s1), (now, s2) = world.trail[obj][-2:]
        world.ask(f"Where was the {obj} before the {now}?", before, s1 + s2[-1:])
    elif task == 5:
        if not world.gives:
            return False
        giver, obj, receiver, line = world.gives[-1]  # the most recent event: no ambiguity
        text, answer = rng.choice(
            [
                (f"Who gave the {obj} to {receiver}?", giver),
                (f"What did {giver} give to {receiver}?", obj),
                (f"Who received the {obj}?", receiver),
                (f"Who did {giver} give the {obj} to?", receiver),
            ]
        )
        world.ask(text, answer, (line,))
    return True


def _relation_story(rng: random.Random) -> Story:
    a, b, c = rng.sample(PLACES, 3)
    direction = rng.choice(DIRECTIONS)
    lines = [BabiLine(f"The {a} is {direction} of the {b}."), BabiLine(f"The {b} is {direction} of the {c}.")]
    if rng.random() < 0.5:
        lines.append(BabiLine(f"What is {direction} of the {b}?", a, (1,)))
    else:
        lines.append(BabiLine(f"What is the {b} {direction} of?", c, (2,)))
    return lines


def config_tasks(cfg: BabiConfig) -> list[int]:
    """The tasks of `cfg`: [cfg.task] for one task, the list for a mix."""
    return list(cfg.task) if isinstance(cfg.task, list) else [cfg.task]


def generate_story(cfg: BabiConfig, rng: random.Random) -> Story:
    """One bAbI-style story of task `cfg.task` (statements with interleaved questions); for a mix, of
    a task drawn uniformly from the list with `rng` (a one-task list draws nothing: same data as the
    plain task)."""
    tasks = config_tasks(cfg)
    task = tasks[0] if len(tasks) == 1 else rng.choice(tasks)
    if task == 4:
        return _relation_story(rng)
    world = _World(rng, cfg.short_moves)
    per_question = cfg.statements_per_question or DEFAULT_STATEMENTS[task]
    asked = 0
    while asked < cfg.questions_per_story:
        for _ in range(per_question):
            if task == 1:
                world.move()
            elif task == 5:
                world.give() if rng.random() < 0.7 else world.move()
            else:
                world.move() if rng.random() < 0.5 or not world.person_at else world.handle_object()
        asked += _question(task, world)
        # Bounded by the task's default pace too: with fewer statements per question, QA3 still needs an
        # object carried through two places, which takes ~35 statements in 1% of stories.
        if len(world.lines) > 40 * cfg.questions_per_story * max(per_question, DEFAULT_STATEMENTS[task]):
            raise RuntimeError("bAbI generator could not ask its questions; raise statements_per_question")
    return world.lines


def generate_stories(cfg: BabiConfig, num_stories: int, seed: int) -> list[Story]:
    """`num_stories` generated stories; the same (cfg, seed) always gives the same stories."""
    rng = random.Random(seed)
    return [generate_story(cfg, rng) for _ in range(num_stories)]


def question_to_texts(q: BabiQuestion) -> tuple[str, str, str]:
    """(context, query, answer text) of one question: the statements are the context."""
    return " ".join(q.statements), QUESTION_LAYOUT.format(question=q.question), f" {q.answer}"


class BabiTask:
    """bAbI QA1-QA5 for the task registry (generated, or the official files with `data_path`)."""

    name = "babi"
    question_layout = QUESTION_LAYOUT  # what `gradmem ask` wraps a plain question in

    def example(self) -> tuple[str, list[str]]:
        """A generated story of the first task this model knows and its questions, for the web page."""
        story = generate_story(
            replace(self.config, task=config_tasks(self.config)[:1], questions_per_story=2), random.Random(0)
        )
        questions = story_questions(story)
        return " ".join(questions[-1].statements), [q.question for q in questions]

    def __init__(self, config: BabiConfig | None = None, **overrides: Any) -> None:
        from gradmem.tasks.tokenizers import build_tokenizer

        self.config = replace(config or BabiConfig(), **overrides)
        self.tokenizer = build_tokenizer(self.config.tokenizer)
        self._files: dict[str, list[BabiQuestion]] = {}

    def to_example(self, q: BabiQuestion) -> Example:
        return answer_example(self.tokenizer, *question_to_texts(q))

    def encode_strings(self, context: str, query: str, target: str) -> Example:
        """An example from text laid out as the task lays it out (query "\nQuestion: ...\nAnswer:",
        target " answer"); the answer's tokens are scored, EOS is added."""
        return answer_example(self.tokenizer, context, query, target)

    def _file_questions(self, split: str) -> list[BabiQuestion]:
        """The questions of `split` in the official files; for a mix, every task's pooled in task order."""
        if split not in self._files:
            name = "test" if split == "test" else "train"
            tasks = config_tasks(self.config)
            if len(tasks) > 1 and Path(str(self.config.data_path)).expanduser().is_file():
                # find_babi_file returns a file path as is, whatever the task: the mix would read it N times.
                raise ValueError(
                    f"a bAbI task mix reads one file per task: data_path must be the release's folder, "
                    f"got the file {self.config.data_path}"
                )
            pooled: list[BabiQuestion] = []
            for task in tasks:
                path = find_babi_file(str(self.config.data_path), task, name)
                stories = parse_babi(Path(path).read_text(encoding="utf-8-sig"))
                if split != "test":  # the 90/10 cut is per task, so every task is in both splits
                    cut = int(len(stories) * 0.9)
                    stories = stories[:cut] if split == "train" else stories[cut:]
                pooled.extend(q for story in stories for q in story_questions(story))
            self._files[split] = pooled
        return self._files[split]

    def questions(self, split: str, num_examples: int, seed: int) -> list[BabiQuestion]:
        """`num_examples` questions of `split`: generated from a split seed, or sampled from the files."""
        rng = random.Random(split_seed(split, seed))
        if self.config.data_path is not None:
            pool = self._file_questions(split)
            return rng.sample(pool, min(num_examples, len(pool)))
        out: list[BabiQuestion] = []
        while len(out) < num_examples:
            out.extend(story_questions(generate_story(self.config, rng)))
        return out[:num_examples]

    def make_split(self, split: str, num_examples: int, seed: int) -> list[Example]:
        return [self.to_example(q) for q in self.questions(split, num_examples, seed)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self.config)}

    def describe(self) -> str:
        source = f"files at {self.config.data_path}" if self.config.data_path else "generated bAbI-style"
        return f"babi: {'+'.join(f'QA{t}' for t in config_tasks(self.config))}, {source}"
