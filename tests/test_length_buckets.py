"""train.length_buckets: batches of alike lengths, each still a function of (seed, stage, step)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import TINY, benchmarks_on_path

from gradmem.run.build import build_model
from gradmem.run.overrides import apply_overrides
from gradmem.run.train_config import TrainConfig
from gradmem.training.trainer import Trainer

SPEC = {  # QA2 contexts run from a few words to ~140: unbucketed batches pad to about twice their length
    "task": {"name": "babi", "task": 2, "tokenizer": {"type": "word", "vocab": "babi"}},
    "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k not in ("vocab_size", "max_positions")}},
    "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
    "train": {
        "steps": 6,
        "batch_size": 4,
        "warmup_steps": 1,
        "eval_every": 3,
        "eval_examples": 4,
        "checkpoint_every": 3,
        "log_every": 1,
        "seed": 5,
        "length_buckets": 4,
    },
}


def trainer(spec: dict, out_dir) -> Trainer:
    torch.manual_seed(0)
    return Trainer.from_spec(build_model(spec), spec, out_dir, device="cpu")


def contexts(t: Trainer, step: int) -> list[tuple[int, ...]]:
    return [tuple(e.context) for e in t._train_examples(step)]


def test_a_block_hands_out_its_pool_once_sorted_by_length_in_a_shuffled_order(tmp_path):
    t = trainer(SPEC, tmp_path)
    block = [contexts(t, step) for step in range(4)]
    pool = t.task(0).make_split("train", 16, seed=1_000_003 * (5 + 1))
    assert sorted(sum(block, [])) == sorted(tuple(e.context) for e in pool)  # every example once
    spans = sorted((min(map(len, b)), max(map(len, b))) for b in block)
    assert all(high <= low for (_, high), (low, _) in zip(spans, spans[1:]))  # lengths do not interleave
    lengths = [max(map(len, b)) for b in block]
    assert lengths != sorted(lengths)  # the steps do not walk from the shortest to the longest
    assert contexts(t, 4) not in block  # the next block draws a new pool


def test_each_step_depends_on_the_step_alone(tmp_path):
    walked = trainer(SPEC, tmp_path / "a")
    in_order = [contexts(walked, step) for step in range(10)]
    jumped = trainer(SPEC, tmp_path / "b")
    assert [contexts(jumped, step) for step in (9, 2, 6, 0)] == [in_order[s] for s in (9, 2, 6, 0)]


def test_buckets_pad_less_than_batches_drawn_alone(tmp_path):
    def padded(t: Trainer) -> int:
        return sum(max(map(len, b)) * len(b) for b in (contexts(t, s) for s in range(64)))

    alone = trainer(apply_overrides(SPEC, ["train.length_buckets=1"]), tmp_path / "a")
    bucketed = trainer(apply_overrides(SPEC, ["train.length_buckets=16"]), tmp_path / "b")
    assert padded(bucketed) < 0.8 * padded(alone)


def test_one_bucket_draws_each_batch_as_before(tmp_path):
    t = trainer(apply_overrides(SPEC, ["train.length_buckets=1"]), tmp_path)
    expected = t.task(0).make_split("train", 4, seed=1_000_003 * (5 + 1) + 7)
    assert contexts(t, 7) == [tuple(e.context) for e in expected]


def test_a_resume_in_the_middle_of_a_block_gives_the_same_losses(tmp_path):
    def losses(spec, out_dir, resume=False):
        t = trainer(spec, out_dir)
        if resume:
            assert t.resume()
        t.train()
        return [r["loss"] for r in t.history if r["kind"] == "train"]

    full = losses(SPEC, tmp_path / "full")
    first = losses(apply_overrides(SPEC, ["train.steps=3"]), tmp_path / "split")  # stops at step 3 of block 0-3
    assert first + losses(SPEC, tmp_path / "split", resume=True) == pytest.approx(full, abs=1e-6)


@pytest.mark.parametrize("value", [0, -2])
def test_length_buckets_must_be_positive(value):
    with pytest.raises(ValueError, match="length_buckets must be >= 1"):
        TrainConfig(length_buckets=value)


def test_the_benchmark_times_both_ways_and_writes_its_table(tmp_path):
    config = tmp_path / "babi.json"
    config.write_text(json.dumps(apply_overrides(SPEC, ["train.batch_size=2"])))
    with benchmarks_on_path():
        length_buckets = importlib.import_module("length_buckets")
        argv = ["--config", str(config), "--tasks", "1,2", "--buckets", "2", "--rounds", "1", "--out", str(tmp_path)]
        assert length_buckets.main(argv) == 0
    result = json.loads((tmp_path / "length_buckets.json").read_text())
    assert [c["task"] for c in result["cells"]] == [1, 2]
    for cell in result["cells"]:
        assert cell["examples_per_block"] == 4 and cell["speed_up"]["median"] > 0
        assert cell["padded_per_real_context_token"]["bucketed"] >= 1.0
    assert "| QA2 |" in (tmp_path / "length_buckets.md").read_text()
