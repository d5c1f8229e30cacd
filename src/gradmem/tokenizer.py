"""Character tokenizer for the synthetic tasks: one token per character, paper vocabulary order.

The vocabulary is `[PAD]=0 [BOS]=1 [EOS]=2 [UNK]=3`, then the alphabet symbols in the given order,
then the punctuation `! ? : |`. With the 62-symbol key-value alphabet (a-z, A-Z, 0-9) this is exactly
the reference vocabulary of size 70, so ids agree with the paper's published data.
"""

from __future__ import annotations

import string
from typing import Any, Iterable, Sequence

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
PUNCTUATION = ("!", "?", ":", "|")

# The 512-symbol alphabet extends the 62 ASCII symbols with a contiguous block of CJK ideographs:
# every code point in U+4E00..U+4FC1 is a single printable character, so one symbol stays one token.
EXTRA_SYMBOLS_START = 0x4E00


def kv_alphabet(size: int) -> list[str]:
    """The key-value task alphabet: 62 = a-z A-Z 0-9; 512 = those 62, then U+4E00.. (450 more)."""
    base = list(string.ascii_lowercase + string.ascii_uppercase + string.digits)
    if size == len(base):
        return base
    if size == 512:
        return base + [chr(EXTRA_SYMBOLS_START + i) for i in range(size - len(base))]
    raise ValueError(f"alphabet size must be 62 or 512, got {size}")


class CharTokenizer:
    """Maps single characters to ids and back; unknown characters encode to `[UNK]`."""

    def __init__(self, alphabet: Sequence[str]) -> None:
        alphabet = list(alphabet)
        for symbol in alphabet:
            if not isinstance(symbol, str) or len(symbol) != 1:
                raise ValueError(f"alphabet symbols must be single characters, got {symbol!r}")
            if symbol in PUNCTUATION:
                raise ValueError(f"alphabet symbol {symbol!r} collides with the task punctuation")
        if len(set(alphabet)) != len(alphabet):
            duplicates = sorted({s for s in alphabet if alphabet.count(s) > 1})
            raise ValueError(f"alphabet has duplicate symbols: {duplicates}")
        self.alphabet = alphabet
        self._id_to_token = list(SPECIAL_TOKENS) + alphabet + list(PUNCTUATION)
        # Only characters are looked up on encode; special tokens are never produced from text.
        self._char_to_id = {c: i for i, c in enumerate(self._id_to_token) if i >= len(SPECIAL_TOKENS)}

    @property
    def vocab_size(self) -> int:
        return len(self._id_to_token)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int:
        return 3

    def encode(self, text: str) -> list[int]:
        """One id per character of `text`; characters outside the vocabulary become `[UNK]`."""
        return [self._char_to_id.get(c, self.unk_id) for c in text]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Join the characters of `ids`; `[PAD]`, `[BOS]`, `[EOS]` are dropped when `skip_special`.

        `[UNK]` is always rendered (as its name) because dropping it would hide an encoding loss.
        Negative ids (the -1 padding used for generations) are skipped.
        """
        out = []
        for i in ids:
            i = int(i)
            if i < 0:
                continue
            if i >= self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary of size {self.vocab_size}")
            if skip_special and i in (self.pad_id, self.bos_id, self.eos_id):
                continue
            out.append(self._id_to_token[i])
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, enough to rebuild the same tokenizer."""
        return {"type": "char", "alphabet": "".join(self.alphabet)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharTokenizer":
        """Rebuild a tokenizer saved with `to_dict`."""
        if data.get("type") != "char":
            raise ValueError(f"not a char tokenizer description: type={data.get('type')!r}")
        return cls(list(data["alphabet"]))

    @classmethod
    def for_kv(cls, size: int) -> "CharTokenizer":
        """The key-value task tokenizer for a 62- or 512-symbol alphabet."""
        return cls(kv_alphabet(size))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.alphabet == other.alphabet

    def __hash__(self) -> int:
        return hash(tuple(self.alphabet))

    def __repr__(self) -> str:
        return f"CharTokenizer(alphabet_size={len(self.alphabet)}, vocab_size={self.vocab_size})"
