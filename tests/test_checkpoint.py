"""Checkpoints, exact resume, and memory files (round trip, wrong model, tampering)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, kv_batch, tiny_model

from gradmem.core.batch import pad_right
from gradmem.core.errors import CheckpointError
from gradmem.core.memory_file import load_memory, save_memory
from gradmem.run.build import build_model
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.run.overrides import apply_overrides
from gradmem.run.saved_state import load_scores
from gradmem.training.trainer import Trainer, read_metrics

SPEC = {
    "task": {"name": "kv", "num_pairs": 2},
    "backbone": {"name": "llama", **{k: v for k, v in TINY.items() if k != "vocab_size"}},
    "method": {"name": "gradmem", "num_memory": 2, "write": {"steps": 1}},
    "train": {
        "steps": 6,
        "batch_size": 4,
        "warmup_steps": 2,
        "schedule": "cosine",
        "eval_every": 3,
        "eval_examples": 8,
        "checkpoint_every": 3,
        "log_every": 1,
        "seed": 3,
    },
}


def train_losses(spec, out_dir, resume=False):
    torch.manual_seed(0)
    trainer = Trainer.from_spec(build_model(spec), spec, out_dir)
    if resume:
        assert trainer.resume()
    trainer.train()
    return [r["loss"] for r in trainer.history if r["kind"] == "train"], trainer


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    full, _ = train_losses(SPEC, tmp_path / "full")
    first_half, _ = train_losses(apply_overrides(SPEC, ["train.steps=3"]), tmp_path / "split")
    # the second sitting continues the same 6-step run from the step-3 checkpoint
    second_half, trainer = train_losses(SPEC, tmp_path / "split", resume=True)
    assert trainer.step == 6
    assert first_half + second_half == pytest.approx(full, abs=1e-6)


def test_a_resume_after_a_crash_logs_each_step_once(tmp_path):
    def crash_at_step_4(record):  # called after the record is written: step 4 is logged, step 3 saved
        if record["kind"] == "train" and record["step"] == 4:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        Trainer.from_spec(build_model(SPEC), SPEC, tmp_path, on_log=crash_at_step_4).train()
    train_losses(SPEC, tmp_path, resume=True)
    raw = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in raw if r["kind"] == "eval"] == [3, 6]
    # a log from before the cut existed: the records the resume repeats replace the lost sitting's
    old = tmp_path / "old.jsonl"
    steps = [("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4), ("train", 3)]
    old.write_text(
        "".join(json.dumps({"kind": k, "step": n, "sitting": i > 5}) + "\n" for i, (k, n) in enumerate(steps))
    )
    with open(old, "a") as f:
        f.write('{"kind": "train", "st')  # the last line, cut short by a crash mid-write
    assert [(r["kind"], r["step"], r["sitting"]) for r in read_metrics(old)] == [
        ("train", 1, False),
        ("train", 2, False),
        ("eval", 2, False),
        ("train", 3, True),
    ]
    # a finished run resumed: its last evaluation repeated at the same step replaces only that evaluation
    old.write_text(
        "".join(json.dumps({"kind": k, "step": 6, "n": i}) + "\n" for i, k in enumerate(["train", "eval", "eval"]))
    )
    assert [(r["kind"], r["n"]) for r in read_metrics(old)] == [("train", 0), ("eval", 2)]


def test_a_resume_without_a_checkpoint_starts_the_log_over(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n{"kind": "tr')  # a crash at step 1
    trainer = Trainer.from_spec(build_model(SPEC), SPEC, tmp_path)
    assert not trainer.resume()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_a_resume_keeps_the_score_of_a_best_saved_after_the_last_checkpoint(tmp_path):
    # evaluations at 2, 4, 6, checkpoints at 3, 6; a crash at step 5 leaves last/ at step 3 and best/
    # from step 4: the resumed run must beat best/'s score, not the step-2 score last/ holds
    spec = apply_overrides(SPEC, ["train.eval_every=2", "train.checkpoint_every=3", "train.eval_examples=16"])
    scores = iter([0.25, 0.5])  # what the evaluations at steps 2 and 4 report

    def crash_at_step_5(record):
        if record["kind"] == "train" and record["step"] == 5:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path, on_log=crash_at_step_5)
    trainer.run_eval = lambda: {"exact_match": next(scores)}
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert load_scores(tmp_path / "best") == {"step": 4, "stage": 0, "exact_match": 0.5}
    resumed = Trainer.from_spec(build_model(spec), spec, tmp_path)
    assert resumed.resume() and resumed.step == 3 and resumed.best == 0.5


def test_entering_a_stage_whose_best_exists_starts_from_its_score(tmp_path):
    # last/ from stage 0, best/ from stage 1 (saved after it): replaying the advance must not reset
    # the best score to -1, or the first evaluation on stage 1 would replace a better best/
    spec = apply_overrides(SPEC, ['train.curriculum=[{"num_pairs": 1}, {}]', "train.stage_steps=[2]"])
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)
    save_checkpoint(tmp_path / "best", trainer.model, spec, scores={"step": 4, "stage": 1, "exact_match": 0.75})
    trainer._next_stage()
    assert trainer.stage == 1 and trainer.best == 0.75
    (tmp_path / "best" / "scores.json").write_text('{"stage": 1}')  # malformed: no score
    trainer.stage = 0
    trainer._next_stage()
    assert trainer.best == -1.0


def test_a_resume_cannot_cut_the_curriculum_below_the_stage_reached(tmp_path):
    train = {"curriculum": [{"num_pairs": 1}, {}], "stage_steps": [2], "steps": 3, "checkpoint_every": 3}
    spec = {**SPEC, "train": {**SPEC["train"], **train}}
    _, trainer = train_losses(spec, tmp_path)
    assert trainer.stage == 1
    shorter = {**spec, "train": {**spec["train"], "curriculum": [], "stage_steps": None, "steps": 6}}
    with pytest.raises(CheckpointError, match="curriculum stage 2 but this spec has 1 stage"):
        Trainer.from_spec(build_model(shorter), shorter, tmp_path).resume()


def test_fixed_stage_schedule_ignores_the_em(tmp_path):
    # advance_exact_match 0 would move on at the first evaluation (step 3): with stage_steps only the
    # schedule moves the run, so every method of a comparison gets the same steps in each stage
    train = {"curriculum": [{"num_pairs": 1}, {}], "stage_steps": [4], "advance_exact_match": 0.0}
    spec = {**SPEC, "train": {**SPEC["train"], **train}}
    _, trainer = train_losses(spec, tmp_path)
    stages = [(r["step"], r["stage"]) for r in trainer.history if r["kind"] == "train"]
    assert stages == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1)]
    assert (tmp_path / "best").is_dir()  # the best checkpoint is kept on the last stage
    with pytest.raises(ValueError, match="stage_steps"):
        Trainer.from_spec(build_model(SPEC), {**spec, "train": {**spec["train"], "stage_steps": [2, 2]}}, "unused")


def test_adam_betas_reach_the_optimizer():
    spec = json.loads(json.dumps({**SPEC, "train": {**SPEC["train"], "adam_betas": (0.9, 0.95)}}))  # as from a file
    trainer = Trainer.from_spec(build_model(SPEC), spec, "unused")
    assert trainer.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    with pytest.raises(ValueError, match="adam_betas"):
        Trainer.from_spec(build_model(SPEC), {**spec, "train": {**spec["train"], "adam_betas": [0.9, 1.0]}}, "unused")


def test_checkpoint_round_trip(tmp_path):
    model = build_model(SPEC)
    save_checkpoint(tmp_path, model, SPEC)
    loaded, task, spec = load_checkpoint(tmp_path)
    assert spec == SPEC and task.config.num_pairs == 2
    batch = kv_batch()
    with torch.no_grad():
        a = model.read(model.write(batch.context), batch.query, batch.target).logits
        b = loaded.read(loaded.write(batch.context), batch.query, batch.target).logits
    assert torch.equal(a, b)


def test_malformed_spec_is_a_clear_error():
    with pytest.raises(ValueError, match="'method' section"):
        build_model({k: v for k, v in SPEC.items() if k != "method"})
    with pytest.raises(ValueError, match="unknown task"):
        build_model({**SPEC, "task": {"name": "babi9"}})
    with pytest.raises(ValueError, match="schedule"):
        Trainer.from_spec(build_model(SPEC), apply_overrides(SPEC, ["train.schedule=exp"]), "unused")
    with pytest.raises(ValueError, match="key.path=value"):
        apply_overrides(SPEC, ["train.steps"])


def written(model, ids=(5, 6, 7, 8)):
    with torch.no_grad():
        return model.write(pad_right([list(ids)]), measure_final=True)


def test_memory_file_round_trip(tmp_path):
    model = tiny_model()
    memory = written(model)
    path = save_memory(tmp_path / "m", memory, model, [5, 6, 7, 8], {"steps": None})
    loaded, meta = load_memory(path, model)
    assert torch.equal(loaded.prefix, memory.prefix)
    assert meta["num_vectors"] == 3 and meta["hidden_size"] == 16 and meta["context_tokens"] == 4
    assert len(meta["write_loss"]) == 2 and meta["final_write_loss"] is not None
    query = pad_right([[1, 2]])
    assert torch.equal(model.generate(loaded, query, 3), model.generate(memory, query, 3))


def test_memory_from_another_model_is_refused(tmp_path):
    path = save_memory(tmp_path / "m", written(tiny_model(seed=0)), tiny_model(seed=0), [5, 6, 7, 8], {})
    with pytest.raises(ValueError, match="different model"):
        load_memory(path, tiny_model(seed=1))


def test_tampered_or_newer_memory_file_is_refused(tmp_path):
    model = tiny_model()
    path = save_memory(tmp_path / "m", written(model), model, [5, 6, 7, 8], {})
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum|damaged"):
        load_memory(path, model)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="damaged"):
        load_memory(path, model)
    side = path.with_suffix(".json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="newer"):
        load_memory(path, model)
