"""Key-value task and character tokenizer: exact format, determinism, splits, validation."""

from __future__ import annotations

import random
import re

import pytest

from gradmem.run.build import build_task
from gradmem.tasks import TASKS
from gradmem.tasks.kv import KVConfig, KVTask, generate_kv, kv_tokenizer
from gradmem.tasks.tokenizers import CharTokenizer, kv_alphabet

PAIR = r"!([a-zA-Z0-9]{2}):([a-zA-Z0-9]{2})!"


def _texts(cfg: KVConfig, n: int, seed: int) -> list[tuple[str, str, str]]:
    tok = kv_tokenizer(cfg)
    return [(tok.decode(e.context), tok.decode(e.query), tok.decode(e.target)) for e in generate_kv(cfg, n, seed)]


@pytest.mark.parametrize("num_pairs", [1, 3])
def test_exact_format(num_pairs: int) -> None:
    cfg = KVConfig(num_pairs=num_pairs)
    for e, (context, query, target) in zip(generate_kv(cfg, 20, seed=0), _texts(cfg, 20, seed=0)):
        assert len(e.context) == len(context) == 7 * num_pairs + 1 == cfg.context_len
        assert re.fullmatch(f"(?:{PAIR}){{{num_pairs}}}\\|", context)
        assert re.fullmatch(r"\?![a-zA-Z0-9]{2}:", query)
        assert re.fullmatch(r"[a-zA-Z0-9]{2}!\|", target)
        assert e.answer_len == 2 and len(e.target) == 4 and len(e.query) == 5


def test_keys_unique_and_target_is_the_query_keys_value() -> None:
    cfg = KVConfig(num_pairs=16)
    queried = set()
    for context, query, target in _texts(cfg, 50, seed=1):
        pairs = re.findall(PAIR, context)
        keys = [k for k, _ in pairs]
        assert len(pairs) == 16 and len(set(keys)) == 16
        key = query[2:4]
        assert dict(pairs)[key] == target[:2]
        queried.add(keys.index(key))
    assert len(queried) > 5  # the queried pair is not always the same position


def test_values_may_repeat() -> None:
    # With a 1-character value over 62 symbols and 40 pairs, repeats are all but certain.
    cfg = KVConfig(num_pairs=40, value_len=1)
    tok = kv_tokenizer(cfg)
    e = generate_kv(cfg, 1, seed=0)[0]
    values = re.findall(r"!..:(.)!", tok.decode(e.context))
    assert len(values) == 40 and len(set(values)) < 40


def test_tokens_use_the_reference_vocabulary() -> None:
    tok = kv_tokenizer(KVConfig())
    assert tok.vocab_size == 70
    assert tok.encode("a") == [4] and tok.encode("A") == [30] and tok.encode("0") == [56]
    assert tok.encode("!?:|") == [66, 67, 68, 69]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


def test_determinism_and_seeds() -> None:
    cfg = KVConfig(num_pairs=8)
    state = random.getstate()
    generate_kv(cfg, 3, seed=5)
    assert random.getstate() == state  # global random state is neither used nor changed
    assert generate_kv(cfg, 10, seed=5) == generate_kv(cfg, 10, seed=5)
    assert generate_kv(cfg, 10, seed=5) != generate_kv(cfg, 10, seed=6)


def test_splits_differ_and_are_reproducible() -> None:
    task = KVTask(num_pairs=8)
    train, valid, test = (task.make_split(s, 20, seed=0) for s in ("train", "valid", "test"))
    assert train != valid and valid != test and train != test
    assert task.make_split("valid", 20, seed=0) == valid
    assert task.make_split("valid", 20, seed=1) != valid
    assert task.split_seed("test", 4) == 14
    with pytest.raises(ValueError, match="valid splits"):
        task.make_split("dev", 1, seed=0)


def test_alphabet_512() -> None:
    cfg = KVConfig(num_pairs=8, alphabet_size=512)
    tok = kv_tokenizer(cfg)
    assert tok.vocab_size == 520
    alphabet = kv_alphabet(512)
    assert alphabet[:62] == kv_alphabet(62) and alphabet[62] == "\u4e00" and len(set(alphabet)) == 512
    ids = {i for e in generate_kv(cfg, 100, seed=0) for i in e.context}
    assert max(ids) < tok.vocab_size and tok.unk_id not in ids
    assert any(62 <= i - 4 < 512 for i in ids)  # symbols beyond the ASCII 62 actually occur


@pytest.mark.parametrize("noise_len", [0, 1, 3])
def test_noise_inserts_characters_between_pairs(noise_len: int) -> None:
    cfg = KVConfig(num_pairs=4, noise_len=noise_len)
    for (context, _, _), e in zip(_texts(cfg, 10, seed=2), generate_kv(cfg, 10, seed=2)):
        assert len(context) == 7 * 4 + 3 * noise_len + 1 == cfg.context_len == len(e.context)
        noise = f"[a-zA-Z0-9]{{{noise_len}}}"
        assert re.fullmatch(f"{PAIR}(?:{noise}{PAIR}){{3}}\\|", context)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_pairs": 0},
        {"key_len": 0},
        {"value_len": 0},
        {"noise_len": -1},
        {"alphabet_size": 100},
        {"num_pairs": 63, "key_len": 1},
    ],
)
def test_bad_configs_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        KVConfig(**kwargs)


def test_key_space_can_be_exhausted_exactly() -> None:
    cfg = KVConfig(num_pairs=62, key_len=1)
    tok = kv_tokenizer(cfg)
    keys = re.findall(r"!(.):", tok.decode(generate_kv(cfg, 1, seed=0)[0].context))
    assert sorted(keys) == sorted(kv_alphabet(62))


def test_tokenizer_round_trip_and_validation() -> None:
    tok = CharTokenizer.for_kv(62)
    text = "!ab:Z9!!q0:xx!|?!ab:"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("a#") == [4, tok.unk_id]
    assert tok.decode([tok.bos_id, 4, tok.eos_id, tok.pad_id]) == "a"
    assert tok.decode([tok.bos_id, 4], skip_special=False) == "[BOS]a"
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    big = CharTokenizer.for_kv(512)
    assert CharTokenizer.from_dict(big.to_dict()).encode("\u4e00z") == big.encode("\u4e00z") == [66, 29]
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="punctuation"):
        CharTokenizer(["a", ":"])


def test_build_task_by_name() -> None:
    task = build_task({"task": {"name": "kv", "num_pairs": 3}})
    assert task.config == KVConfig(num_pairs=3) and "3 pairs" in task.describe()
    with pytest.raises(ValueError) as err:
        build_task({"task": {"name": "nope"}})
    assert str(err.value) == f"unknown task 'nope'; valid tasks: {', '.join(sorted(TASKS))}"


def test_values_of_varying_length_are_scored_whole():
    from gradmem.tasks.kv import KVTask

    task = KVTask(num_pairs=3, value_len=1, value_len_max=4)
    examples = task.make_split("train", 200, seed=0)
    lengths = {e.answer_len for e in examples}
    assert lengths == {1, 2, 3, 4}  # every length drawn
    for e in examples:
        assert len(e.target) == e.answer_len + 2  # the value, then the closing "!|"
    fixed = KVTask(num_pairs=3)
    assert fixed.make_split("train", 5, seed=0) == KVTask(num_pairs=3, value_len_max=None).make_split(
        "train", 5, seed=0
    )
    assert {e.answer_len for e in fixed.make_split("train", 50, seed=0)} == {2}
