"""No traceback from any command on any input: endless devices, huge or binary files, stdin without
end, checkpoint JSON of the wrong shape, absurd counts. Each gets one line on stderr and exit
status 2, quickly and without reading more than its bound."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from test_checkpoint import SPEC

from gradmem.cli.main import main
from gradmem.run.build import build_model
from gradmem.run.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck") / "ck"
    save_checkpoint(folder, build_model(SPEC), SPEC)
    return folder


def tampered(tmp_path, checkpoint, name: str, content) -> str:
    """A copy of the checkpoint with `name` replaced by `content` (JSON), its manifest unchanged."""
    folder = tmp_path / "bad"
    folder.mkdir()
    for path in checkpoint.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / name).write_text(json.dumps(content))
    return str(folder)


def run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse refuses a bad option value by exiting
        return int(stop.code)


def manifest_with(checkpoint, sha256) -> dict:
    return {**json.loads((checkpoint / "manifest.json").read_text()), "sha256": sha256}


CASES = {  # name: (argv with CK / STORE / BIN placeholders, files to tamper, what stderr must say)
    "context /dev/zero": (["write", "CK", "--context", "/dev/zero"], None, "larger than the limit"),
    "context /dev/urandom": (["write", "CK", "--context", "/dev/urandom"], None, "larger than the limit"),
    "context not UTF-8": (["write", "CK", "--context", "BIN"], None, "not UTF-8 text (byte 0xff at offset 2)"),
    "context a folder": (["write", "CK", "--context", "STORE"], None, "Is a directory"),
    "stdin endless": (["write", "CK"], None, "the context on stdin is larger than the limit"),
    "queries /dev/zero": (["ask", "CK", "x", "--queries-file", "/dev/zero"], None, "larger than the limit"),
    "inspect /dev/urandom": (["inspect", "CK", "x", "--context", "/dev/urandom"], None, "larger than the limit"),
    "eval data /dev/zero": (["eval", "CK", "--data", "/dev/zero"], None, "larger than the limit"),
    "eval data binary": (["eval", "CK", "--data", "BIN"], None, "not UTF-8 text"),
    "eval examples 1e9": (["eval", "CK", "--examples", "1000000000"], None, "more than the limit of 1000000"),
    "data -n 1e9": (["data", "--config", "CFG", "-n", "1000000000", "--out", "x"], None, "more than the limit"),
    "train config /dev/zero": (["train", "--config", "/dev/zero", "--out", "OUT"], None, "larger than the limit"),
    "spec.json a list": (["eval", "BAD"], ("spec.json", []), "spec.json is not a JSON object"),
    "spec.json a number": (["write", "BAD", "--context", "CTX"], ("spec.json", 7), "spec.json is not a JSON object"),
    "spec section a list": (["eval", "BAD"], ("spec.json", {**SPEC, "task": [1]}), "section 'task' must be an object"),
    "manifest sha256 a list": (["eval", "BAD"], ("manifest.json", "SHA:[]"), "manifest.json is damaged"),
    "manifest names a path": (["eval", "BAD"], ("manifest.json", "SHA:../x"), "manifest.json is damaged"),
    "manifest not an object": (["eval", "BAD"], ("manifest.json", [1, 2]), "manifest.json is damaged"),
    "backbone.json a list": (["eval", "BAD"], ("backbone.json", []), "backbone.json is not a JSON object"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_bad_input_is_one_line_and_exit_2(case, checkpoint, tmp_path, capsys, monkeypatch):
    argv, tamper, expected = CASES[case]
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"ab\xff\xfe\x00cd")
    (tmp_path / "ctx.txt").write_text("!ab:cd!|")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    bad = None
    if tamper is not None:
        name, content = tamper
        if isinstance(content, str) and content.startswith("SHA:"):
            content = manifest_with(checkpoint, [] if content == "SHA:[]" else {content[4:]: "00"})
        bad = tampered(tmp_path, checkpoint, name, content)
    places = {
        "CK": str(checkpoint),
        "BAD": bad,
        "STORE": str(tmp_path),
        "BIN": str(binary),
        "CTX": str(tmp_path / "ctx.txt"),
        "CFG": str(tmp_path / "spec.json"),
        "OUT": str(tmp_path / "run"),
    }
    argv = [places.get(a, a) for a in argv]
    if argv[0] in ("write", "ask", "inspect"):
        argv += ["--store", str(tmp_path / "store")]
    if case == "stdin endless":
        monkeypatch.setattr("sys.stdin", open("/dev/zero"))  # noqa: SIM115 - closed with the test's process
    started = time.perf_counter()
    assert run(argv) == 2
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"gradmem {argv[0]}: error: ") and expected in err, err
    assert seconds < 30  # bounded: the endless inputs stop at their limit (16 MiB) at once


def test_out_of_memory_is_one_line_with_advice(checkpoint, capsys, monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("gradmem.cli.main.load_checkpoint", exhausted)
    assert main(["eval", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err == "gradmem eval: error: out of memory; use a smaller input, fewer examples or a smaller --batch-size\n"


def test_a_regular_file_over_the_bound_is_refused_from_its_size(tmp_path, monkeypatch):
    from gradmem.core import bounded_io

    big = tmp_path / "big.txt"
    big.write_text("a" * 100)
    read: list[int] = []
    real = bounded_io.read_stream
    monkeypatch.setattr(bounded_io, "read_stream", lambda *a: read.append(1) or real(*a))
    with pytest.raises(ValueError, match=r"big file \(100 bytes\) is larger than the limit of 10 bytes"):
        bounded_io.read_limited(big, 10, "big file")
    assert read == []  # refused by its size: not a byte was read
    assert bounded_io.read_limited(big, 100, "big file") == b"a" * 100


@pytest.mark.parametrize(
    "change, named",
    [
        (
            {"hidden_size": 4096},
            "(70, 16) in the weights, (70, 4096) by the spec",
        ),  # width: the embedding alone would be 70 x 4096, the MLP far more
        ({"num_layers": 400}, "missing ['backbone.blocks.2."),
        ({"num_layers": 1}, "unexpected ['backbone.blocks.1."),
        ({"max_positions": 10**9}, "MiB of state beside"),  # rotary tables of 10^9 positions: gigabytes
    ],
)
def test_tampered_sizes_in_a_spec_are_refused_before_any_allocation(checkpoint, tmp_path, change, named, monkeypatch):
    import torch

    from gradmem.core.errors import CheckpointError
    from gradmem.run.checkpoint import load_checkpoint

    bad = tampered(tmp_path, checkpoint, "spec.json", {**SPEC, "backbone": {**SPEC["backbone"], **change}})
    manifest = Path(bad) / "manifest.json"  # tampered with care: the checksum of the new spec recorded
    sums = json.loads(manifest.read_text())
    sums["sha256"]["spec.json"] = hashlib.sha256((Path(bad) / "spec.json").read_bytes()).hexdigest()
    manifest.write_text(json.dumps(sums))
    real_full = torch.full
    sizes: list[int] = []

    def counted_full(size, *args, **kwargs):  # the rotary tables and masks start here
        out = real_full(size, *args, **kwargs)
        sizes.append(out.numel() if out.device.type != "meta" else 0)
        return out

    monkeypatch.setattr(torch, "full", counted_full)
    with pytest.raises(CheckpointError, match="spec.json") as caught:
        load_checkpoint(bad)
    assert named in str(caught.value)
    assert max(sizes, default=0) < 10**6  # nothing the spec's sizes asked for was allocated for real
