"""Tokenizers: one interface for the character tokenizer of the synthetic tasks and the subword
tokenizers of the natural-language tasks.

A task needs `encode`, `decode`, `pad_id`, `eos_id`, `unk_id`, `vocab_size` and `to_dict` (what a
checkpoint records so the same tokenizer is rebuilt); `build_tokenizer` turns any such dict back
into a tokenizer.

`CharTokenizer` is one token per character in the paper's vocabulary order: `[PAD]=0 [BOS]=1
[EOS]=2 [UNK]=3`, then the alphabet symbols in the given order, then the punctuation `! ? : |`.
With the 62-symbol key-value alphabet (a-z, A-Z, 0-9) this is exactly the reference vocabulary of
size 70, so ids agree with the paper's published data.

`HFTokenizer` adapts a Hugging Face tokenizer: either a model folder's own (`{"type": "hf", "path":
...}`, `{"type": "hf", "pretrained": "smollm2-135m"}`) or a `tokenizers.Tokenizer` built in-process
and stored inline as JSON (`{"type": "hf", "json": ...}`), which is what the hermetic tests use.

`WordTokenizer` is one token per word or punctuation mark over a fixed word list, for models trained
from scratch on a closed vocabulary: `{"type": "word", "vocab": "babi"}` (every word gradmem's bAbI
generator writes, `gradmem.tasks.babi.babi_vocabulary`) or `{"type": "word", "words": [...]}`.
Its spec is short, so a checkpoint records the spec rather than the whole tokenizer.

Every tokenizer names what it cannot encode with `unknown(text)` (characters, or words for
`WordTokenizer`), so the checks of user input can say what to fix.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from typing import Any

from gradmem.core.task import Tokenizer
from gradmem.tasks.babi_words import babi_vocabulary

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

    def text_pattern(self) -> str | None:
        """A regular expression matching exactly the non-blank texts this tokenizer encodes without
        `[UNK]` (one token per character), for the service's published schema."""
        chars = "".join(re.escape(c) for c in self._char_to_id)
        visible = "".join(re.escape(c) for c in self._char_to_id if not c.isspace())
        return f"^[{chars}]*[{visible}][{chars}]*$"

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

    def unknown(self, text: str, most: int = 10) -> list[str]:
        """Up to `most` distinct characters of `text` that encode to `[UNK]` (see `_unknown_characters`)."""
        return _unknown_characters(self, text, most)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description, enough to rebuild the same tokenizer."""
        return {"type": "char", "alphabet": "".join(self.alphabet)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharTokenizer:
        """Rebuild a tokenizer saved with `to_dict`."""
        if data.get("type") != "char":
            raise ValueError(f"not a char tokenizer description: type={data.get('type')!r}")
        return cls(list(data["alphabet"]))

    @classmethod
    def for_kv(cls, size: int) -> CharTokenizer:
        """The key-value task tokenizer for a 62- or 512-symbol alphabet."""
        return cls(kv_alphabet(size))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.alphabet == other.alphabet

    def __hash__(self) -> int:
        return hash(tuple(self.alphabet))

    def __repr__(self) -> str:
        return f"CharTokenizer(alphabet_size={len(self.alphabet)}, vocab_size={self.vocab_size})"


class HFTokenizer:
    """A Hugging Face tokenizer seen through gradmem's tokenizer interface (no special tokens added)."""

    def __init__(self, tokenizer: Any, source: dict[str, Any]) -> None:
        self.tokenizer = tokenizer  # transformers PreTrainedTokenizerBase or tokenizers.Tokenizer
        self.source = source  # how to rebuild it (to_dict)
        self._fast = hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "convert_ids_to_tokens")

    @classmethod
    def from_folder(cls, path: str, source: dict[str, Any] | None = None) -> HFTokenizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), source or {"type": "hf", "path": str(path)})

    @classmethod
    def from_tokenizers(cls, tokenizer: Any) -> HFTokenizer:
        """Wrap a `tokenizers.Tokenizer` object; it is serialised inline in `to_dict`."""
        return cls(tokenizer, {"type": "hf", "json": tokenizer.to_str()})

    def text_pattern(self) -> str | None:
        """None: which texts a subword or word vocabulary encodes is not a regular expression a
        schema can carry (the service answers 422 for the others, naming them)."""
        return None

    def _token_id(self, *names: str) -> int | None:
        for name in names:
            if self._fast:
                found = self.tokenizer.token_to_id(name)
            else:
                found = getattr(self.tokenizer, f"{name}_id", None) if name.endswith("token") else None
                if found is None and name in self.tokenizer.get_vocab():
                    found = self.tokenizer.get_vocab()[name]
            if found is not None:
                return int(found)
        return None

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size() if self._fast else len(self.tokenizer))

    @property
    def eos_id(self) -> int:
        found = self._token_id("eos_token", "[EOS]", "</s>", "<|endoftext|>", "<eos>")
        if found is None:
            raise ValueError("the tokenizer has no end-of-sequence token")
        return found

    @property
    def unk_id(self) -> int | None:
        """The id unknown input maps to; None for byte-level tokenizers, which have none."""
        return self._token_id("unk_token", "[UNK]", "<unk>")

    @property
    def bos_id(self) -> int | None:
        return self._token_id("bos_token", "[BOS]", "<s>", "<bos>")

    @property
    def pad_id(self) -> int:
        # Right padding never reaches a real token, so any id works; the tokenizer's own pad if it has one.
        found = self._token_id("pad_token", "[PAD]", "<pad>")
        return self.eos_id if found is None else found

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        if self._fast:
            return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; negative ids (generation padding) are dropped."""
        ids = [int(i) for i in ids if int(i) >= 0]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special)

    def unknown(self, text: str, most: int = 10) -> list[str]:
        """Up to `most` distinct characters of `text` that encode to the unknown token (none for a
        byte-level tokenizer, which can encode anything); see `_unknown_characters`."""
        return _unknown_characters(self, text, most)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)

    def __repr__(self) -> str:
        return f"HFTokenizer({ {k: v for k, v in self.source.items() if k != 'json'} }, vocab_size={self.vocab_size})"


def word_tokenizer(texts: Iterable[str]) -> HFTokenizer:
    """A word-level tokenizer over the words and punctuation of `texts`, built in-process.

    Ids: [PAD]=0 [BOS]=1 [EOS]=2 [UNK]=3, then tokens in sorted order. Meant for tiny hermetic
    models (tests, smoke runs); decoding joins tokens with spaces.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text)})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return HFTokenizer.from_tokenizers(tokenizer)


WORD_VOCABULARIES = ("babi",)  # the named word lists of {"type": "word", "vocab": NAME}


class WordTokenizer(HFTokenizer):
    """One token per word or punctuation mark of a fixed, case-sensitive word list.

    Ids: [PAD]=0 [BOS]=1 [EOS]=2 [UNK]=3, then the words in sorted order, so the same list always
    gives the same ids. Text is split on whitespace, and every punctuation character is a token of
    its own ("Answer:" is "Answer" ":"). Built from a spec (`from_dict`): `{"type": "word", "vocab":
    "babi"}` or `{"type": "word", "words": [...]}`; `to_dict` returns that spec unchanged.
    """

    def __init__(self, words: Iterable[str], source: dict[str, Any]) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        # WhitespaceSplit + Punctuation rather than Whitespace: Whitespace keeps runs such as "?." as
        # one piece, which a word list would then need as a word of its own.
        splitter = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
        words = list(words)
        for word in words:
            pieces = [p for p, _ in splitter.pre_tokenize_str(word)] if isinstance(word, str) else None
            if pieces != [word]:
                # A word the splitter cuts up (or a non-string) could never be matched as one token.
                raise ValueError(
                    f"word tokenizer: {word!r} is not one word or one punctuation mark (it splits into {pieces})"
                )
        self.words = sorted(set(words))
        vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *self.words])}
        tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = splitter
        tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins with spaces, none before . ? !
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        super().__init__(tokenizer, dict(source))

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> WordTokenizer:
        """The tokenizer of `{"type": "word", "vocab": "babi"}` or `{"type": "word", "words": [...]}`."""
        if spec.get("type") != "word":
            raise ValueError(f"not a word tokenizer description: type={spec.get('type')!r}")
        extra = sorted(set(spec) - {"type", "vocab", "words"})
        if extra or ("vocab" in spec) == ("words" in spec):
            raise ValueError(
                'a word tokenizer spec is {"type": "word", "vocab": "babi"} or {"type": "word", "words": [...]}, '
                f"got {spec!r}"
            )
        if "vocab" in spec:
            if spec["vocab"] != "babi":
                raise ValueError(f"unknown word vocabulary {spec['vocab']!r}; valid: {', '.join(WORD_VOCABULARIES)}")
            return cls(babi_vocabulary(), spec)
        words = spec["words"]
        if not isinstance(words, (list, tuple)) or not words:
            raise ValueError(f"a word tokenizer's words must be a non-empty list of strings, got {words!r}")
        return cls(words, spec)

    def unknown(self, text: str, most: int = 10) -> list[str]:
        """Up to `most` distinct words (or punctuation marks) of `text` outside the word list, each
        repr'd (e.g. "'Marry'"), in order of first appearance. The list is case-sensitive, so a
        word known in another case is named with it: "'mary' (did you mean 'Mary'?)"."""
        by_lower = {word.lower(): word for word in self.words}
        found: list[str] = []
        for piece in dict.fromkeys(p for p, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(text)):
            if self.tokenizer.token_to_id(piece) is None:
                known = by_lower.get(piece.lower())
                found.append(f"{piece!r} (did you mean {known!r}?)" if known else repr(piece))
                if len(found) == most:
                    break
        return found

    def __repr__(self) -> str:
        named = f"vocab={self.source['vocab']!r}" if "vocab" in self.source else f"words={len(self.words)}"
        return f"WordTokenizer({named}, vocab_size={self.vocab_size})"


def build_tokenizer(spec: dict[str, Any] | None) -> Tokenizer:
    """A tokenizer from its `to_dict` description: char, word (vocab / words), hf (path /
    pretrained / inline json)."""
    if spec is None:
        raise ValueError('this task needs a tokenizer: e.g. {"type": "hf", "pretrained": "smollm2-135m"}')
    kind = spec.get("type")
    if kind == "char":
        return CharTokenizer.from_dict(spec)
    if kind == "word":
        return WordTokenizer.from_dict(spec)
    if kind == "hf":
        if "json" in spec:
            from tokenizers import Tokenizer

            return HFTokenizer(Tokenizer.from_str(spec["json"]), dict(spec))
        if "pretrained" in spec or "path" in spec:
            from gradmem.backbones.pretrained import resolve_model_path

            return HFTokenizer.from_folder(str(resolve_model_path(spec)), dict(spec))
    raise ValueError(
        f"unknown tokenizer spec {spec!r}; valid types: char, word (vocab | words), hf (path | pretrained | json)"
    )


def unknown_characters(tokenizer: Tokenizer, text: str, most: int = 10) -> list[str]:
    """What `tokenizer` cannot encode in `text` (characters, or words for a `WordTokenizer`)."""
    return list(tokenizer.unknown(text, most))


def _unknown_characters(tokenizer: Tokenizer, text: str, most: int = 10) -> list[str]:
    """Up to `most` distinct characters of `text` the tokenizer maps to its unknown token, each as
    U+XXXX with its repr (control characters stay readable), in order of first appearance."""
    found: list[str] = []
    for char in dict.fromkeys(text):
        if not char.isspace() and tokenizer.unk_id in tokenizer.encode(char):
            found.append(f"U+{ord(char):04X} {char!r}")
            if len(found) == most:
                break
    return found
