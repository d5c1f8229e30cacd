"""The README's API snippet runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_snippet_runs():
    text = README.read_text()
    match = re.search(r"<!-- readme-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its API snippet"
    namespace: dict = {}
    exec(compile(match.group(1), "README snippet", "exec"), namespace)
    assert namespace["answers"].shape == (8, 4)
    assert namespace["memory"].prefix.shape == (8, 4, 64)
    assert namespace["memory"].stats.steps == 5
