"""Subword tokenizers for the natural-language tasks, behind the same small interface as CharTokenizer.

A task needs `encode`, `decode`, `pad_id`, `eos_id`, `vocab_size` and `to_dict` (what a checkpoint
records so the same tokenizer is rebuilt). `HFTokenizer` adapts a Hugging Face tokenizer: either a
model folder's own (`{"type": "hf", "path": ...}`, `{"type": "hf", "pretrained": "smollm2-135m"}`)
or a `tokenizers.Tokenizer` built in-process and stored inline as JSON (`{"type": "hf", "json": ...}`),
which is what the hermetic tests use. `build_tokenizer` turns any such dict back into a tokenizer.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from gradmem.tokenizer import CharTokenizer


class HFTokenizer:
    """A Hugging Face tokenizer seen through gradmem's tokenizer interface (no special tokens added)."""

    def __init__(self, tokenizer: Any, source: dict[str, Any]) -> None:
        self.tokenizer = tokenizer  # transformers PreTrainedTokenizerBase or tokenizers.Tokenizer
        self.source = source  # how to rebuild it (to_dict)
        self._fast = hasattr(tokenizer, "encode_batch") and not hasattr(tokenizer, "convert_ids_to_tokens")

    @classmethod
    def from_folder(cls, path: str, source: dict[str, Any] | None = None) -> "HFTokenizer":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), source or {"type": "hf", "path": str(path)})

    @classmethod
    def from_tokenizers(cls, tokenizer: Any) -> "HFTokenizer":
        """Wrap a `tokenizers.Tokenizer` object; it is serialised inline in `to_dict`."""
        return cls(tokenizer, {"type": "hf", "json": tokenizer.to_str()})

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
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[BOS]", "[EOS]", "[UNK]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tokenizer.add_special_tokens(["[PAD]", "[BOS]", "[EOS]", "[UNK]"])
    return HFTokenizer.from_tokenizers(tokenizer)


def build_tokenizer(spec: dict[str, Any] | None) -> Any:
    """A tokenizer from its `to_dict` description: char, hf (path / pretrained / inline json)."""
    if spec is None:
        raise ValueError("this task needs a tokenizer: e.g. {\"type\": \"hf\", \"pretrained\": \"smollm2-135m\"}")
    kind = spec.get("type")
    if kind == "char":
        return CharTokenizer.from_dict(spec)
    if kind == "hf":
        if "json" in spec:
            from tokenizers import Tokenizer

            return HFTokenizer(Tokenizer.from_str(spec["json"]), dict(spec))
        if "pretrained" in spec or "path" in spec:
            from gradmem.backbones.pretrained import resolve_model_path

            return HFTokenizer.from_folder(str(resolve_model_path(spec)), dict(spec))
    raise ValueError(f"unknown tokenizer spec {spec!r}; valid types: char, hf (path | pretrained | json)")


def unknown_characters(tokenizer: Any, text: str, most: int = 10) -> list[str]:
    """Up to `most` distinct characters of `text` the tokenizer maps to its unknown token, each as
    U+XXXX with its repr (control characters stay readable), in order of first appearance."""
    found: list[str] = []
    for char in dict.fromkeys(text):
        if not char.isspace() and tokenizer.unk_id in tokenizer.encode(char):
            found.append(f"U+{ord(char):04X} {char!r}")
            if len(found) == most:
                break
    return found
