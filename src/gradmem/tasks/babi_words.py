"""The closed vocabulary of the generated bAbI-style stories: names, places, objects, verbs and the
template words, and `babi_vocabulary()` over all of them (the word tokenizer's "babi" vocabulary).

Kept apart from the generator (gradmem.tasks.babi) so that the tokenizers, which the tasks import,
can read the vocabulary without importing a task.
"""

from __future__ import annotations

PEOPLE = ("Mary", "John", "Daniel", "Sandra")
GIVERS = ("Fred", "Jeff", "Bill", "Mary")
PLACES = ("bathroom", "hallway", "kitchen", "garden", "office", "bedroom")
OBJECTS = ("football", "apple", "milk")
MOVES = ("moved to", "went to", "journeyed to", "travelled to", "went back to")
GRABS = ("picked up", "got", "grabbed", "took")
DROPS = ("dropped", "discarded", "put down", "left")
GIVES = ("gave", "handed", "passed")
DIRECTIONS = ("north", "south", "east", "west")
# The words of the generator's sentence and question templates (below) and of the example layout
# of `question_to_texts`, beyond the names, places, objects and verbs of the tuples above. A test
# checks every generated story against this list; add a word here with any template that uses it.
# Changing the vocabulary changes the ids of {"type": "word", "vocab": "babi"}: old checkpoints of
# word-tokenized models would then read different ids.
TEMPLATE_WORDS = (
    "the", "The", "to", "is", "of", "was", "before",  # statements and questions
    "Where", "What", "Who", "did", "give", "received",  # question words
    "Question", "Answer", ":", ".", "?",  # layout and punctuation
)  # fmt: skip


def babi_vocabulary() -> tuple[str, ...]:
    """Every word and punctuation mark of generated bAbI-style stories (all five tasks) and of their
    question layout, sorted and distinct: the "babi" vocabulary of the word tokenizer."""
    phrases = (*PEOPLE, *GIVERS, *PLACES, *OBJECTS, *MOVES, *GRABS, *DROPS, *GIVES, *DIRECTIONS, *TEMPLATE_WORDS)
    return tuple(sorted({word for phrase in phrases for word in phrase.split()}))
