"""Run the shell commands of README.md and docs/*.md, shrunk to seconds, in a scratch folder.

A `DocShell` is a scratch folder laid out like the repository (configs/, checkpoints/, benchmarks/,
scripts/, tests/ linked in; `runs/demo/gradmem/best` a copy of checkpoints/kv16 unless the page
runs the demo itself; the files a page asks the reader to bring, see `DocShell.bring`) plus what a terminal keeps between
commands: shell variables, the id of the last memory written, the app of the last `gradmem serve`.
`DocShell.run(command)` executes one command there, in this process:

- `mkdir -p DIR`, `echo 'TEXT' > FILE`, `NAME=value`: done in Python;
- `gradmem ...`: `gradmem.cli.main(argv)`; `gradmem serve` builds its app as usual, then the
  uvicorn server is replaced by a TestClient of that app (no socket, nothing left running);
- `python scripts/X.py ...` / `python benchmarks/X.py ...`: the script's `main()`, with `ROOT`
  (and perfkit's `RESULTS`) of every benchmarks/ and scripts/ module pointed at the scratch
  folder, so default output folders land there and never in the repository; `scripts/demo.py`'s
  `gradmem` helper calls the CLI in this process instead of a subprocess (3 s of imports each);
  report.py's figure drawing (redrawn after every benchmark cell) is replaced by a stub that
  writes an empty file: tests/test_benchmarks.py draws the real figures;
- `curl URL [-H ...] [-d JSON]`: that request, sent to the app of the last `gradmem serve`.

Placeholders: `$NAME` is a variable set earlier; `ID`, or a memory id printed in the docs (32 hex
digits, from the page's own checkpoint), is the id of the last memory written in this shell.

What runs is the command as written plus the options of `QUICK` for its program: options the
program already has, appended (argparse keeps the last value; `--set` items join the command's own
list), that cut steps, examples and sizes; a `--threads` above 1 becomes 1 (more threads only
slow a tiny run down on a busy machine). Training runs one step per curriculum stage, so that each
run still reaches its last stage and saves best/ (`quick_train`); kv16_cpu's torch.compile is
turned off (inductor compiles for minutes). Presets are shrunk copies (`shrink_preset`): the same
methods, keys, pairs and seeds with tiny backbones, one step per cell and 4 test examples.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import io
import json
import random
import re
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINKED = ("configs", "checkpoints", "benchmarks", "scripts", "tests")  # the repository folders a command reads
MEMORY_ID = re.compile(r"^[0-9a-f]{32}$")


def blocks(language: str) -> list[tuple[str, int, str]]:
    """(file name, line of the opening fence, body) of every block in that language."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                found.append((path.name, text[: match.start()].count("\n") + 1, match.group(2)))
    return found


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


def program(command: str) -> str:
    """What runs a command: `gradmem <subcommand>`, the script path of `python <script>.py`, else
    the first word (`mkdir`, `curl`, `pip`, `NAME=value` gives `=`)."""
    words = shlex.split(command)
    if re.match(r"^\w+=", words[0]):
        return "="
    if words[0] == "gradmem":
        return f"gradmem {words[1]}"
    if words[0] in ("python", "python3") and words[1].endswith(".py"):
        return words[1]
    return words[0]


# --- shrinking ---------------------------------------------------------------------------------

QUICK_TRAIN = [  # train.* only, so that `--resume` takes them too
    "train.batch_size=2",
    "train.eval_every=1",
    "train.eval_examples=2",
    "train.eval_batch_size=2",
    "train.log_every=1",
    "train.warmup_steps=0",
    "train.advance_exact_match=0.0",  # every evaluation moves the curriculum on: one step per stage
]


def quick_train(spec: dict[str, Any], extra_steps: int = 0) -> list[str]:
    """--set items that train `spec` in one step per curriculum stage: its last stage is reached and
    scored once, so the run ends with a best/ checkpoint as a full run does."""
    train = spec.get("train", {})
    stages = len(train.get("curriculum") or []) or 1
    items = [*QUICK_TRAIN, f"train.steps={stages + extra_steps}"]
    if train.get("stage_steps"):  # fixed-length warm-up stages: one step each
        items.append(f"train.stage_steps={json.dumps([1] * len(train['stage_steps']))}")
    if train.get("compile"):  # inductor compiles for minutes on CPU (tests/test_compiled.py covers it)
        items.append("train.compile=false")
    return items


def shrink_backbone(backbone: dict[str, Any]) -> dict[str, Any]:
    """A built-in Llama or an HF config of conftest's tiny size; a pretrained backbone as it is."""
    if backbone.get("name") == "llama":
        return {**backbone, **{k: v for k, v in TINY.items() if k != "vocab_size"}}
    if "config" in backbone:  # an HF architecture from scratch (e.g. Mamba)
        config = {**backbone["config"], "hidden_size": 16, "num_hidden_layers": 1}
        return {**backbone, "config": {**config, **({"state_size": 4} if "state_size" in config else {})}}
    return backbone


def shrink_spec(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    spec["backbone"] = shrink_backbone(spec["backbone"])
    for item in quick_train(spec):
        key, value = item.split("=", 1)
        spec["train"][key.split(".", 1)[1]] = json.loads(value)
    return spec


def shrink_preset(preset: dict[str, Any]) -> dict[str, Any]:
    """The same experiment (methods, keys, pairs, seeds) at tiny size: tiny backbones, one training
    step per stage, 4 test examples, no curriculum ramp (so each 1-step cell ends on its last stage
    and saves best/, as a full cell does)."""
    preset = copy.deepcopy(preset)
    preset["base"] = shrink_spec(preset["base"])
    preset["test_examples"], preset["eval_batch_size"] = 4, 4
    preset["eval"] = {**preset.get("eval", {}), "batch_size": 4}
    preset["ramp"] = None
    for method in preset["methods"]:
        method.pop("ramp", None)
        if "backbone" in method:
            method["backbone"] = shrink_backbone(method["backbone"])
        if "train" in method:  # a method's own longer budget becomes the base's one step
            method["train"] = {k: v for k, v in method["train"].items() if k != "steps"}
        if "eval" in method and "write_curve_examples" in method["eval"]:
            method["eval"]["write_curve_examples"] = 2
    return preset


def _with_set(args: list[str], items: list[str]) -> list[str]:
    """`args` with `items` added to its --set list (a second --set would replace the first)."""
    if "--set" not in args:
        return [*args, "--set", *items]
    end = args.index("--set") + 1
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    return [*args[:end], *items, *args[end:]]


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _spec(args: list[str], shell: DocShell, default: str | None = None) -> dict[str, Any]:
    """The run spec a command trains: its --config (or `default`) with its own --set items applied."""
    from gradmem.run.overrides import apply_overrides

    config = _option(args, "--config") or default
    if config is None:
        return {}
    items = []
    if "--set" in args:
        for arg in args[args.index("--set") + 1 :]:
            if arg.startswith("--"):
                break
            items.append(arg)
    return apply_overrides(json.loads((shell.root / config).read_text()), items)


def _shrunk_preset(args: list[str], shell: DocShell) -> list[str]:
    preset = _option(args, "--preset")
    assert preset is not None
    path = shell.root / "shrunk" / Path(preset).name
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(shrink_preset(json.loads((shell.root / preset).read_text()))))
    return [str(path) if a == preset else a for a in args]


def _quick_gradmem_train(args: list[str], shell: DocShell) -> list[str]:
    return _with_set(args, quick_train(_spec(args, shell), extra_steps=1 if "--resume" in args else 0))


def _quick_demo(args: list[str], shell: DocShell) -> list[str]:
    spec = _spec(args, shell, default="configs/kv_demo.json")
    return _with_set([*args, "--test-examples", "8", "--baseline-steps", "1"], quick_train(spec))


def _quick_time_to_accuracy(args: list[str], shell: DocShell) -> list[str]:
    return _with_set([*args, "--test-examples", "8"], quick_train(_spec(args, shell)))


TINY_PERF = ["--batch", "2", "--pairs", "1", "--memory", "2", "--layers", "1", "--heads", "2"]
TINY_PERF += ["--width", "16", "--intermediate", "32", "--rounds", "1"]
TINY_PRETRAINED_PERF = ["--batch", "1", "--pairs", "1", "--memory", "2", "--rounds", "1"]  # sizes: the model's

# program -> the arguments it runs with, from the docs' arguments (placeholders already filled in)
QUICK: dict[str, Callable[[list[str], DocShell], list[str]]] = {
    "gradmem train": _quick_gradmem_train,
    "gradmem eval": lambda a, s: a if "--data" in a else [*a, "--examples", "8"],
    "gradmem data": lambda a, s: a,
    "gradmem write": lambda a, s: a,
    "gradmem ask": lambda a, s: a,
    "gradmem inspect": lambda a, s: a,
    "gradmem store": lambda a, s: a,
    "gradmem serve": lambda a, s: a,
    "scripts/demo.py": _quick_demo,
    "benchmarks/capacity.py": _shrunk_preset,
    "benchmarks/run_preset.py": _shrunk_preset,
    "benchmarks/write_steps.py": lambda a, s: [*a, "--examples", "8"],
    "benchmarks/time_to_accuracy.py": _quick_time_to_accuracy,
    "benchmarks/throughput.py": lambda a, s: [*a, *(TINY_PRETRAINED_PERF if "--pretrained" in a else TINY_PERF)],
    "benchmarks/attention.py": lambda a, s: [*a, "--lengths", "8,16", "--batch", "1", "--rounds", "1"],
    "benchmarks/training_free.py": lambda a, s: [*a, "--examples", "2", "--steps", "0,1", "--batch-size", "2"],
}
SHELL = ("mkdir", "echo", "=", "curl")  # done by DocShell itself


def runnable(command: str) -> bool:
    return program(command) in QUICK or program(command) in SHELL


# --- the shell ---------------------------------------------------------------------------------


def _load_script(path: Path) -> Any:
    """benchmarks/<name>.py as the module `name` (the name its siblings import it by), scripts/X.py
    as `docs_X`."""
    if path.parent.name == "benchmarks":
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        return importlib.import_module(path.stem)
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DocShell:
    def __init__(self, root: Path, demo_checkpoint: bool = True) -> None:
        """demo_checkpoint: put a copy of checkpoints/kv16 (trained key-value retrieval, the demo's
        tokenizer, so answers can be checked) where `python scripts/demo.py` leaves its checkpoint."""
        self.root = root
        for name in LINKED:
            (root / name).symlink_to(ROOT / name)
        if demo_checkpoint:
            shutil.copytree(ROOT / "checkpoints" / "kv16", root / "runs" / "demo" / "gradmem" / "best")
        self.variables: dict[str, str] = {}
        self.memory_id: str | None = None
        self.client: Any = None  # TestClient of the app the last `gradmem serve` built
        self.log: list[str] = []
        self.bring()

    def bring(self) -> None:
        """The files the docs tell the reader to bring: README's `my_examples.jsonl` (key-value
        examples as text, for checkpoints/kv16), tasks.md's `my_{train,valid,test}.jsonl` (the
        page's own two example lines) and `PATH/train-v1.1.json` (the SQuAD-format test fixture)."""
        from gradmem.tasks.kv import KVConfig, sample_kv_strings

        rng = random.Random(0)
        lines = [
            dict(zip(("context", "query", "target"), sample_kv_strings(KVConfig(num_pairs=16), rng))) for _ in range(4)
        ]
        (self.root / "my_examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        qa = next(body for name, _, body in blocks("json") if name == "tasks.md" and '"question"' in body)
        for split in ("train", "valid", "test"):
            (self.root / f"my_{split}.jsonl").write_text(qa)
        (self.root / "PATH").mkdir()
        shutil.copy(ROOT / "tests" / "fixtures" / "squad_mini.json", self.root / "PATH" / "train-v1.1.json")

    def close(self) -> None:
        if self.client is not None:
            self.client.__exit__(None, None, None)
            self.client = None

    def words(self, command: str) -> list[str]:
        for name, value in self.variables.items():
            command = command.replace(f"${name}", value)
        words = shlex.split(command)
        for i, word in enumerate(words):
            if i > 1 and (word == "ID" or MEMORY_ID.match(word)):
                assert self.memory_id is not None, f"`{command}` needs a memory written before it"
                words[i] = self.memory_id
        return words

    def quick(self, kind: str, args: list[str]) -> list[str]:
        """What runs: QUICK's options for the program, and at most 1 torch thread (a command asking for
        more, e.g. `--threads 2`, only slows down on a busy test machine)."""
        args = QUICK[kind](args, self)
        threads = _option(args, "--threads")
        return [*args, "--threads", "1"] if threads and int(threads) > 1 else args

    def run(self, command: str) -> str:
        """Run one command; its stdout (and stderr) are returned; a failure raises AssertionError."""
        words, kind = self.words(command), program(command)
        if kind == "=":
            name, value = words[0].split("=", 1)
            self.variables[name] = value
            return ""
        if kind == "mkdir":
            for folder in words[1:]:
                if folder != "-p":
                    (self.root / folder).mkdir(parents=True, exist_ok=True)
            return ""
        if kind == "echo":
            assert words[-2] == ">", f"only `echo TEXT > FILE` is understood: {command}"
            (self.root / words[-1]).write_text(" ".join(words[1:-2]) + "\n")
            return ""
        if kind == "curl":
            return self._curl(words)
        args = self.quick(kind, words[1:] if kind.startswith("gradmem ") else words[2:])
        self.log.append(" ".join(args))
        module = None if kind.startswith("gradmem ") else _load_script(ROOT / kind)  # imported before patching
        threads = torch.get_num_threads()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), self._patched(module):
                code = self._gradmem(args) if module is None else self._script(module, args)
        except SystemExit as exit_:
            code = exit_.code
        except Exception as err:
            raise AssertionError(f"`{' '.join(args)}` raised {err!r}\n{out.getvalue()[-3000:]}") from err
        finally:
            torch.set_num_threads(threads)
        assert code in (0, None), f"`{' '.join(args)}` exited with {code}\n{out.getvalue()[-3000:]}"
        if kind == "gradmem write":
            self.memory_id = json.loads(out.getvalue().strip().splitlines()[-1])["id"]
        return out.getvalue()

    def _gradmem(self, args: list[str]) -> int:
        from gradmem.cli.main import main

        return main(args)

    def _script(self, module: Any, args: list[str]) -> Any:
        assert getattr(module, "ROOT", self.root) == self.root, "the script's ROOT must point at the scratch folder"
        argv = sys.argv
        sys.argv = [module.__file__, *args]
        try:
            return module.main()
        finally:
            sys.argv = argv

    def _demo_gradmem(self, *args: str) -> list[dict]:
        from gradmem.cli.main import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(list(args)) == 0, f"gradmem {' '.join(args)} failed"
        return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]

    @contextlib.contextmanager
    def _patched(self, script: Any = None) -> Iterator[None]:
        """ROOT / RESULTS of `script` and of every module of benchmarks/ -> this folder; report.py's
        plots stubbed; demo.py's `gradmem` -> the CLI in this process; uvicorn's server -> a
        TestClient of the app. Everything restored afterwards."""
        import uvicorn

        shell = self

        class Server:  # what `gradmem serve` starts: here the app is kept for the curl commands
            def __init__(self, config: Any) -> None:
                self.app = config.app

            def run(self) -> None:
                from fastapi.testclient import TestClient

                shell.close()
                shell.client = TestClient(self.app)
                shell.client.__enter__()

        def no_plot(path: Any, *args: Any, **kwargs: Any) -> None:
            Path(path).write_bytes(b"")

        saved: list[tuple[Any, str, Any]] = [(uvicorn, "Server", uvicorn.Server)]
        uvicorn.Server = Server
        if script is not None and script.__name__ == "docs_demo":  # same main, same arguments, no subprocess
            saved.append((script, "gradmem", script.gradmem))
            script.gradmem = self._demo_gradmem
        for module in {id(m): m for m in [*sys.modules.values(), script] if m is not None}.values():
            where = Path(getattr(module, "__file__", None) or "/").resolve()
            if where.parent not in (ROOT / "benchmarks", ROOT / "scripts"):
                continue
            for name, value in vars(module).copy().items():
                new: Any = None
                if name == "ROOT":
                    new = self.root
                elif name == "RESULTS":
                    new = self.root / "results" / "perf"
                elif name.startswith("plot_") and getattr(value, "__module__", "") == "report":
                    new = no_plot
                if new is not None:
                    saved.append((module, name, value))
                    setattr(module, name, new)
        try:
            yield
        finally:
            for module, name, value in reversed(saved):
                setattr(module, name, value)

    def _curl(self, words: list[str]) -> str:
        assert self.client is not None, "curl needs a `gradmem serve` before it"
        url, headers, data, i = None, {}, None, 1
        while i < len(words):
            if words[i] == "-H":
                key, value = words[i + 1].split(":", 1)
                headers[key.strip()] = value.strip()
                i += 2
            elif words[i] == "-d":
                data, i = words[i + 1], i + 2
            elif words[i].startswith("-"):
                i += 1
            else:
                url, i = words[i], i + 1
        assert url is not None
        path = "/" + url.split("/", 1)[1].replace("/ID/", f"/{self.memory_id}/")
        headers.setdefault("host", url.split("/", 1)[0])  # what curl sends: the server checks it (--allowed-hosts)
        response = self.client.request("POST" if data else "GET", path, content=data, headers=headers)
        assert response.is_success, f"curl {url}: {response.status_code} {response.text}"
        body = response.json()
        if isinstance(body, dict) and "id" in body and "answers" not in body:
            self.memory_id = body["id"]
        return response.text
