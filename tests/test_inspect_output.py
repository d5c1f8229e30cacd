"""`gradmem inspect` says what its decode is: a greedy reconstruction from the memory with its
accuracy, framed so that it cannot be read as the stored context."""

from __future__ import annotations

import json

import pytest
from test_checkpoint import SPEC

from gradmem.cli.main import main


def test_inspect_labels_the_reconstruction(tmp_path, capsys):
    config = tmp_path / "spec.json"
    config.write_text(json.dumps(SPEC))
    out, store = tmp_path / "run", ["--store", str(tmp_path / "store")]
    assert main(["train", "--config", str(config), "--out", str(out), "--set", "train.steps=1"]) == 0
    context = tmp_path / "ctx.txt"
    context.write_text("!ab:cd!!ef:gh!|")
    assert main(["write", str(out / "last"), "--context", str(context), "--quiet", *store]) == 0
    memory_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    assert main(["inspect", str(out / "last"), memory_id, *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(line.startswith("decoded from memory") for line in lines)  # the old, misleading heading
    note = lines.index(
        "greedy reconstruction: the WRITE head decoding the memory alone, token by token; "
        "a fidelity probe, not the stored context:"
    )
    assert lines[note + 1].startswith("  greedy token accuracy ") and "(against the context below)" in lines[note + 1]
    decoded = lines[note + 2]
    assert decoded.startswith("  [") and decoded.endswith("]") and len(decoded) == len("  []") + 15
    assert lines[note + 3 :] == ["the context that was written:", "  [!ab:cd!!ef:gh!|]"]
    assert main(["inspect", str(out / "last"), memory_id, "--json", *store]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reconstruction_note"].startswith("greedy reconstruction")
    # one character a token: the accuracy is the share of positions where the decode matches the context
    hand = sum(a == b for a, b in zip(decoded[3:-1], "!ab:cd!!ef:gh!|")) / 15
    assert report["token_accuracy"] == pytest.approx(hand)
