"""Hardening round 2, the API contract under a property-based fuzzer: schemathesis generates
requests from the live server's /openapi.json (valid and invalid ones, single calls and stateful
write -> ask -> delete sequences) and runs every check it has: no 5xx, every status and content type
documented, responses and headers as their schemas say, schema-valid requests accepted and
schema-breaking ones refused. Bounded examples and a fixed seed keep it to ~half a minute."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the service needs the 'serve' extra")
pytest.importorskip("schemathesis", reason="the API fuzz test needs schemathesis (dev extra)")
from conftest import live_server, tiny_model  # noqa: E402

from gradmem.serve.budget import Budget  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.service import ServiceConfig  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Per-field limits small enough that their products stay inside the work budget (see CONFIG).
LIMITS = dict(max_questions=4, max_new_tokens=8, rate_per_second=1e6, rate_burst=1_000_000)
BUDGET = Budget(max_write_steps=4, max_question_tokens=24)


def test_the_published_schema_survives_a_fuzzer(tmp_path):
    engine = Engine(
        tiny_model(),
        CharTokenizer.for_kv(62),
        MemoryStore(tmp_path / "store"),
        EngineConfig(chunk_tokens=15, max_blocks=2),
    )
    url, stop = live_server(engine, ServiceConfig(**LIMITS, budget=BUDGET))
    cli = shutil.which("schemathesis") or shutil.which("st")
    command = [cli] if cli else [sys.executable, "-m", "schemathesis.cli"]
    try:
        run = subprocess.run(
            [
                *command,
                "--config-file",
                str(CONFIG),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--workers",
                "1",
            ],
            cwd=tmp_path,  # its example database and reports stay out of the repository
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    for phase in ("Coverage", "Fuzzing", "Stateful"):  # each phase ran (a skipped one shows no timing)
        assert f"{phase} (in " in run.stdout, run.stdout[-3000:]
    assert "4 covered / 4 selected" in run.stdout  # the write -> show / ask / reconstruct / delete links
