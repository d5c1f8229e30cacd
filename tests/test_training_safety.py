"""Training and checkpoints against crashes, bad numbers and careless commands; CLI errors are one
line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_checkpoint import SPEC

from gradmem.cli.main import main
from gradmem.core.checkpoint_folder import recover, write_folder
from gradmem.core.errors import CheckpointError, TrainingDiverged
from gradmem.run.build import build_model
from gradmem.run.checkpoint import load_checkpoint, save_checkpoint
from gradmem.training.trainer import Trainer


def run(args: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of `gradmem ARGS`, argparse exits included."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str) -> str:
    """The error line of a failed command, checking it is the only one and stands on its own line."""
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gradmem") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


@pytest.mark.parametrize(
    "spec, overrides, says",
    [
        ([SPEC], [], "must be a JSON object"),
        ({**SPEC, "train": {**SPEC["train"], "stepz": 3}}, [], "train: unknown key(s) 'stepz'; valid keys: adam_betas"),
        ({**SPEC, "backbone": {**SPEC["backbone"], "hiden_size": 3}}, [], "backbone: unknown key(s) 'hiden_size'"),
        ({**SPEC, "task": {**SPEC["task"], "pairs": 3}}, [], "task: unknown key(s) 'pairs'; valid keys: alphabet_size"),
        ({**SPEC, "extra": {}}, [], "the run spec: unknown key(s) 'extra'"),
        (SPEC, ["train.steps=abc"], "train.steps must be an integer, got 'abc' (str)"),
        (SPEC, ["train.steps=1.5"], "train.steps must be an integer, got 1.5 (float)"),
        (SPEC, ["train.lr=Infinity"], "train.lr must be a finite number, got inf"),
        (SPEC, ["method.write.optim.lr=NaN"], "method.write.optim.lr must be a finite number"),
    ],
)
def test_bad_configs_are_one_line_errors(tmp_path, capsys, spec, overrides, says):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    line = one_line_error(
        *run(["train", "--config", str(path), "--out", str(tmp_path / "r"), "--set", *overrides], capsys)
    )
    assert says in line
    assert not (tmp_path / "r").exists()


def test_a_non_finite_loss_stops_training_without_a_checkpoint_of_it(tmp_path, monkeypatch):
    spec = {**SPEC, "train": {**SPEC["train"], "checkpoint_every": 1}}
    trainer = Trainer.from_spec(build_model(spec), spec, tmp_path)
    honest = trainer._gradients

    def poisoned(batch):
        loss, read_loss, write_losses = honest(batch)
        if trainer.step == 2:  # the third step's gradients are NaN
            for p in trainer.model.parameters():
                p.grad.fill_(float("nan"))
        return loss, read_loss, write_losses

    monkeypatch.setattr(trainer, "_gradients", poisoned)
    with pytest.raises(TrainingDiverged, match="step 3: .*gradient norm nan.*stopped without saving"):
        trainer.train()
    state = torch.load(tmp_path / "last" / "trainer.pt", weights_only=True)
    weights = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert state["step"] == 2 and all(torch.isfinite(t).all() for t in weights.values())


def test_resume_refuses_a_partial_or_damaged_last(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=2"]) == 0
    capsys.readouterr()
    before = (out / "last" / "model.safetensors").read_bytes()
    (out / "last" / "trainer.pt").unlink()
    line = one_line_error(*run(["train", "--config", str(config), "--out", str(out), "--resume"], capsys))
    assert "trainer.pt is missing" in line
    assert (out / "last" / "model.safetensors").read_bytes() == before  # not overwritten by a fresh start
    (out / "last" / "trainer.pt").write_bytes(b"garbage")
    line = one_line_error(*run(["train", "--config", str(config), "--out", str(out), "--resume"], capsys))
    assert "trainer.pt does not match its SHA-256" in line
    (out / "last" / "manifest.json").unlink()  # a checkpoint from before checksums: garbage is still caught
    line = one_line_error(*run(["train", "--config", str(config), "--out", str(out), "--resume"], capsys))
    assert "trainer.pt is damaged" in line


def test_a_flipped_bit_in_the_weights_is_caught(tmp_path, capsys):
    save_checkpoint(tmp_path / "ck", build_model(SPEC), SPEC)
    weights = tmp_path / "ck" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors does not match its SHA-256"):
        load_checkpoint(tmp_path / "ck")
    weights.write_bytes(bytes(data[:100]))
    (tmp_path / "ck" / "manifest.json").unlink()
    line = one_line_error(
        *run(["ask", str(tmp_path / "ck"), "0" * 32, "-q", "?", "--store", str(tmp_path / "s")], capsys)
    )
    assert "model.safetensors is damaged" in line


def test_a_save_switches_the_whole_folder_and_a_crash_between_renames_recovers(tmp_path):
    model = build_model(SPEC)
    save_checkpoint(tmp_path / "last", model, SPEC, {"step": 1})
    save_checkpoint(tmp_path / "last", model, {**SPEC, "note": 2}, {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no leftovers beside it
    assert json.loads((tmp_path / "last" / "spec.json").read_text())["note"] == 2
    # the fallback path crashed between its two renames: the old folder aside, the new one complete
    os.rename(tmp_path / "last", tmp_path / ".last.old-abc")
    save_checkpoint(tmp_path / "staged", model, {**SPEC, "note": 3}, {"step": 3})
    os.rename(tmp_path / "staged", tmp_path / ".last.new-abc")
    recover(tmp_path / "last")
    assert json.loads((tmp_path / "last" / "spec.json").read_text())["note"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    # a crash while the new folder was still being written: the previous checkpoint comes back
    os.rename(tmp_path / "last", tmp_path / ".last.old-def")
    (tmp_path / ".last.new-def").mkdir()
    (tmp_path / ".last.new-def" / "model.safetensors").write_bytes(b"half")
    recover(tmp_path / "last")
    assert json.loads((tmp_path / "last" / "spec.json").read_text())["note"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_reading_a_checkpoint_leaves_a_save_in_progress_alone(tmp_path):
    # `gradmem eval runs/x/best` while the run saves best/: the reader deleted the half-written
    # folder and the training run died on its next file
    model = build_model(SPEC)
    save_checkpoint(tmp_path / "best", model, SPEC)

    def read_midway(folder):
        torch.save({}, folder / "half.pt")
        load_checkpoint(tmp_path / "best")  # a reader, between the writer's files
        assert (folder / "half.pt").exists()

    write_folder(tmp_path / "best", read_midway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # the writer's own switch cleaned up


def test_resume_continues_the_saved_spec(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=2", "method.write.steps=2"])
        == 0
    )
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--out", str(out), "--resume", "--set", "train.steps=3"]) == 0
    err = capsys.readouterr().err
    saved = json.loads((out / "last" / "spec.json").read_text())
    assert saved["method"]["write"]["steps"] == 2 and saved["train"]["steps"] == 3  # not the config's 1 write step
    assert "changed from the saved spec: train.steps 2 -> 3" in err
    assert "ignored: method.write.steps 2 -> 1" in err
    line = one_line_error(*run(["train", "--out", str(out), "--resume", "--set", "method.write.steps=1"], capsys))
    assert "only train.* settings may change" in line


def test_training_into_a_run_folder_needs_resume(config, tmp_path, capsys):
    # a repeated command once restarted at step 0 over the old run's checkpoints and log
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=2"]) == 0
    before = (out / "metrics.jsonl").read_text()
    line = one_line_error(*run(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=1"], capsys))
    assert "already holds a run; add --resume" in line
    assert (out / "metrics.jsonl").read_text() == before


def test_cli_errors_are_one_line(tmp_path, capsys):
    line = one_line_error(*run(["eval", str(tmp_path), "--batch-size", "0"], capsys))
    assert "--batch-size: must be >= 1, got 0" in line
    (tmp_path / "f").write_text("a file where a folder should be")
    line = one_line_error(*run(["store", "list", "--store", str(tmp_path / "f" / "s")], capsys))
    assert "cannot create the memory store: Not a directory" in line
    line = one_line_error(*run(["store", "show", "--store", str(tmp_path / "s")], capsys))
    assert "store show needs a memory id" in line
    line = one_line_error(*run(["eval", str(tmp_path / "nothing")], capsys))
    assert "is not a gradmem checkpoint" in line


@pytest.mark.parametrize(
    "option, message",
    [
        (["--lr", "inf"], "inner lr must be a finite number > 0, got inf"),  # stored a NaN memory
        (["--lr", "nan"], "inner lr must be a finite number > 0, got nan"),
        (["--target-loss", "nan"], "target loss must be a finite number >= 0"),  # stored M0 as "written"
        (["--steps", "-1"], "write steps must be >= 0"),
    ],
)
def test_write_settings_the_service_refuses_are_refused_on_the_command_line(tmp_path, capsys, option, message):
    save_checkpoint(tmp_path / "ck", build_model(SPEC), SPEC)
    (tmp_path / "ctx.txt").write_text("!ab:cd!|")
    args = ["write", str(tmp_path / "ck"), "--context", str(tmp_path / "ctx.txt"), "--store", str(tmp_path / "s")]
    assert message in one_line_error(*run(args + option, capsys))
    assert not list((tmp_path / "s").glob("**/*.safetensors"))  # nothing stored


def test_a_closed_pipe_ends_quietly(tmp_path):
    from test_store import fake_memory

    from gradmem.serve.store import MemoryStore, memory_key

    store = MemoryStore(tmp_path)
    first = memory_key("fp", [0], {})
    meta, _ = store.get_or_write(first, lambda: fake_memory(0))
    for i in range(1, 1000):  # copies of its sidecar: more output than a pipe buffers
        key = memory_key("fp", [i], {})
        (store.objects / f"{key}.json").write_text(json.dumps({**meta, "id": key}))
    proc = subprocess.run(
        f"{sys.executable} -m gradmem.cli store list --store {tmp_path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1 and proc.stderr == ""
