"""Every code block of README.md and docs/*.md is checked against the code it documents.

- python blocks run as written (in a scratch folder holding a tiny trained checkpoint where a block
  loads `runs/demo/gradmem/best`); a block that needs the packaged pretrained model runs under the
  `pretrained` marker only;
- shell commands are parsed by the real parsers, not run (training commands take minutes to
  hours): `gradmem ...` by the CLI's argparse, `python <script>.py --flag ...` against the
  script's own options, `pip install -e ".[extra]"` against pyproject's extras; every file a
  command names must exist;
- json blocks parse.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import tiny_run_spec

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NEEDS_MODEL = ("smollm2", "gemma3", "pretrained")  # a python block naming these needs the packaged model
SHELL_SKIP = (
    "echo ",
    "cd ",
    "export ",
    "CK=",
    "torchrun ",
    "accelerate ",
    "bash ",
    "curl ",
    "apt-get ",
    "git ",
    "mkdir ",
)  # programs that are not ours to parse


def blocks(language: str) -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((path.name, text[: match.start()].count("\n") + 1, match.group(2)))
    return found


def block_id(block: tuple[str, int, str]) -> str:
    return f"{block[0]}:{block[1]}"


def shell_commands() -> list[tuple[str, str]]:
    """(where, command) for each command of each bash block; continuation lines joined, comments cut."""
    commands = []
    for name, line, body in blocks("bash"):
        for text in body.replace("\\\n", " ").splitlines():
            for command in text.split(" #", 1)[0].split("&&"):
                command = command.strip()
                if command and not command.startswith("#"):
                    commands.append((f"{name}:{line}", command))
    return commands


@pytest.fixture(scope="module")
def demo_checkpoint_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder with a tiny trained key-value checkpoint at runs/demo/gradmem/best."""
    from gradmem.build import build_model, save_checkpoint
    from gradmem.train import Trainer

    folder = tmp_path_factory.mktemp("docs")
    spec = tiny_run_spec(steps=2, batch_size=4, eval_every=2, eval_examples=4, log_every=1)
    torch.manual_seed(0)
    model = build_model(spec)
    Trainer.from_spec(model, spec, folder / "run").train()
    save_checkpoint(folder / "runs" / "demo" / "gradmem" / "best", model, spec)
    return folder


@pytest.mark.parametrize("block", blocks("python"), ids=block_id)
def test_python_blocks_run(block: tuple[str, int, str], demo_checkpoint_folder: Path, monkeypatch) -> None:
    name, line, code = block
    if any(word in code for word in NEEDS_MODEL):
        pytest.skip("needs the packaged pretrained model: see the pretrained-marked variant")
    monkeypatch.chdir(demo_checkpoint_folder if "runs/demo" in code else ROOT)
    exec(compile(code, f"{name}:{line}", "exec"), {"__name__": "docs_block"})


@pytest.mark.pretrained
@pytest.mark.parametrize("block", [b for b in blocks("python") if any(w in b[2] for w in NEEDS_MODEL)], ids=block_id)
def test_python_blocks_with_the_pretrained_model_run(block: tuple[str, int, str]) -> None:
    name, line, code = block
    exec(compile(code, f"{name}:{line}", "exec"), {"__name__": "docs_block"})


@pytest.mark.parametrize("block", blocks("json"), ids=block_id)
def test_json_blocks_parse(block: tuple[str, int, str]) -> None:
    import json

    for text in block[2].strip().splitlines():
        json.loads(text)


def _script_options(path: Path) -> set[str]:
    """The --options a script declares, with those of the helper modules beside it that it imports."""
    text = path.read_text()
    helpers = [p for p in path.parent.glob("*.py") if p != path and re.search(rf"\b(from|import) {p.stem}\b", text)]
    return {o for source in [path, *helpers] for o in re.findall(r"""["'](--[\w-]+)["']""", source.read_text())}


def _check_paths(args: list[str]) -> None:
    for arg in args:
        if re.match(r"^(configs|benchmarks|scripts|tests)/[\w./-]+$", arg):
            assert (ROOT / arg).exists(), f"{arg} does not exist"


@pytest.mark.parametrize("where, command", shell_commands(), ids=[c[0] + " " + c[1][:40] for c in shell_commands()])
def test_shell_commands_parse(where: str, command: str) -> None:
    if command.startswith(SHELL_SKIP):
        return
    words = shlex.split(command.replace("$CK", "runs/demo/gradmem/best"))
    if words[0] == "gradmem":
        from gradmem.cli import build_parser

        _check_paths(words)
        try:
            build_parser().parse_args(words[1:])
        except SystemExit as exit_:
            pytest.fail(f"{where}: `{command}` does not parse (exit {exit_.code})")
    elif words[0] in ("python", "python3") and words[1].endswith(".py"):
        script = ROOT / words[1]
        assert script.exists(), f"{where}: {words[1]} does not exist"
        _check_paths(words[2:])
        unknown = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - _script_options(script)
        assert not unknown, f"{where}: {words[1]} has no option(s) {sorted(unknown)}"
    elif words[0] in ("python", "python3") and words[1] == "-m":
        assert words[2] == "pytest", f"{where}: unexpected module {words[2]}"
    elif words[:2] == ["pip", "install"]:
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for word in words:
            for extra in re.findall(r"\.\[([\w,]+)\]", word):
                assert set(extra.split(",")) <= set(extras), f"{where}: unknown extra in {word}"
    else:
        pytest.fail(f"{where}: no check for `{command}`; add one or list its program in SHELL_SKIP")
