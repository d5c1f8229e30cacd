"""The package's layers: every import of every module (those inside functions included) points to
its own layer or one below, and no modules import each other in a circle.

    core  <-  backbones  <-  methods  <-  tasks  <-  run, evaluation  <-  training  <-  serve  <-  cli  <-  gradmem

(docs/architecture.md draws the same picture.) A module of layer k may import any module of layers
0..k; within one layer the import graph must still have no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("backbones",),
    ("methods",),
    ("tasks",),
    ("run", "evaluation"),
    ("training",),
    ("serve",),
    ("cli",),
    ("",),  # the package root: the public API, gradmem/__init__.py
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "gradmem").rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The gradmem modules `name` imports anywhere in its file (a `from X import y` that names a
    submodule y counts as importing X.y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    return {m for m in found if m in known and m != name}


def layer_of(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    raise AssertionError(f"{name} is in no layer; add its folder to LAYERS (and to docs/architecture.md)")


GRAPH = {name: imports_of(name, path, set(modules())) for name, path in modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in GRAPH:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_import_points_up_a_layer(name: str) -> None:
    upward = sorted(m for m in GRAPH[name] if layer_of(m) > layer_of(name))
    assert not upward, f"{name} (layer {LAYERS[layer_of(name)]}) imports from higher layers: {upward}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as [a, b, ..., a], or None (depth first, white / grey / black)."""
    state: dict[str, int] = {}  # absent: unseen, 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path: Path) -> None:
    """The parser counts an import inside a function, and a cycle hidden that way fails the test."""
    source = tmp_path / "gradmem" / "a.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from gradmem.b import g\n", encoding="utf-8")
    assert imports_of("gradmem.a", source, {"gradmem.a", "gradmem.b"}) == {"gradmem.b"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
