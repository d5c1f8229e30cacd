"""Hardening round 2, keys and store: an API key that could never work is refused at start, an ask
racing a delete answers 404, and special files in the store are refused without being opened."""

from __future__ import annotations

import os
import threading

import pytest

pytest.importorskip("fastapi", reason="the service needs the 'serve' extra (fastapi, uvicorn, httpx)")
from conftest import tiny_model  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from gradmem.cli.main import main  # noqa: E402
from gradmem.core import memory_file as memory_io  # noqa: E402
from gradmem.core.errors import DamagedMemory  # noqa: E402
from gradmem.serve.engine import Engine, EngineConfig  # noqa: E402
from gradmem.serve.service import ServiceConfig, create_app  # noqa: E402
from gradmem.serve.store import MemoryStore  # noqa: E402
from gradmem.tasks.tokenizers import CharTokenizer  # noqa: E402

TEXT = "!ab:cd!!ef:gh!|"


def make_engine(root) -> Engine:
    return Engine(
        tiny_model(), CharTokenizer.for_kv(62), MemoryStore(root), EngineConfig(chunk_tokens=15, max_blocks=2)
    )


@pytest.mark.parametrize("key", ["", "caf\u00e9-key", "two words", "tab\tkey", " padded"])
def test_a_key_that_could_never_match_is_refused(key):
    with pytest.raises(ValueError, match="API key") as caught:
        ServiceConfig(api_key=key)
    assert key.strip() == "" or key not in str(caught.value)  # the message never shows the key


@pytest.mark.parametrize("flag, env", [(["--api-key", ""], None), ([], ""), (["--api-key", "\u00e9t\u00e9"], None)])
def test_serve_refuses_a_bad_key_at_start_in_one_line(tmp_path, capsys, monkeypatch, flag, env):
    if env is None:
        monkeypatch.delenv("GRADMEM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("GRADMEM_API_KEY", env)  # set but empty: once an open server
    # the checkpoint does not exist: the key is refused before the model is loaded
    assert main(["serve", str(tmp_path / "no-checkpoint"), "--store", str(tmp_path / "s"), *flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradmem serve: error: the API key ")


@pytest.mark.parametrize("when", ["before the sidecar", "between sidecar and tensor"])
def test_an_ask_racing_a_delete_answers_404(tmp_path, monkeypatch, when):
    engine = make_engine(tmp_path)
    (written,) = engine.write_texts([TEXT])
    mid = written.id
    real_sidecar = memory_io.read_sidecar

    def deleted_meanwhile(*args, **kwargs):
        if when == "before the sidecar":
            engine.store.delete(mid)
            return real_sidecar(*args, **kwargs)
        meta = real_sidecar(*args, **kwargs)
        engine.store.delete(mid)  # the sidecar was read; the tensor goes before it is read
        return meta

    monkeypatch.setattr(memory_io, "read_sidecar", deleted_meanwhile)
    with TestClient(create_app(engine, ServiceConfig())) as c:
        r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]})
    assert r.status_code == 404 and r.json()["detail"] == f"no memory {mid!r}"


def _in_thread(call, seconds: float = 10.0):
    """Run `call` in a daemon thread: (finished in time, its result or exception)."""
    box: list = []

    def run() -> None:
        try:
            box.append(call())
        except Exception as err:  # noqa: BLE001 - handed back to the test
            box.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box[0] if box else None


def test_a_fifo_in_the_store_is_refused_without_blocking(tmp_path):
    engine = make_engine(tmp_path)
    (written,) = engine.write_texts([TEXT])
    mid = written.id
    tensor = tmp_path / "objects" / f"{mid}.safetensors"
    tensor.unlink()
    os.mkfifo(tensor)  # opening it for reading would wait for a writer forever
    try:
        done, result = _in_thread(lambda: engine.memory(mid))
        assert done, "reading the FIFO blocked the model thread"
        assert isinstance(result, DamagedMemory) and "not a regular file" in str(result)
        context = tmp_path / "objects" / f"{mid}.context.txt"
        context.unlink()
        os.mkfifo(context)
        done, result = _in_thread(lambda: engine.store.context(mid))
        assert done and result is None
        with TestClient(create_app(engine, ServiceConfig(request_timeout_s=5))) as c:
            r = c.post(f"/v1/memories/{mid}/ask", json={"questions": ["?!ab:"]})
            assert r.status_code == 409 and "not a regular file" in r.json()["detail"]
            assert str(tmp_path) not in r.text
    finally:
        for fifo in (tensor, tmp_path / "objects" / f"{mid}.context.txt"):
            _release(fifo)


def _release(fifo) -> None:
    """Open a FIFO for writing and close it, so a reader a failing run left waiting gets EOF."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader waits; ENOENT: gone
        pass


def test_memory_files_outside_the_store_are_checked_too(tmp_path):
    fifo = tmp_path / "mem.json"
    os.mkfifo(fifo)
    done, result = _in_thread(lambda: memory_io.read_sidecar(tmp_path / "mem", label="memory mem"))
    assert done and isinstance(result, DamagedMemory) and "not a regular file" in str(result)


def test_a_special_file_as_a_lock_neither_blocks_nor_breaks_writes(tmp_path):
    """The lock of a key is opened read-write (a FIFO opened so never waits) and never followed
    through a link; a folder where the lock belongs is a clear store error, not a hang."""
    engine = make_engine(tmp_path)
    (written,) = engine.write_texts([TEXT])
    assert engine.forget(written.id)
    lock = tmp_path / "locks" / f"{written.id}.lock"
    os.mkfifo(lock)
    done, result = _in_thread(lambda: engine.write_texts([TEXT]))
    assert done and result[0].created and result[0].id == written.id
    assert engine.forget(written.id)
    if lock.exists():
        lock.unlink()
    lock.mkdir()
    done, result = _in_thread(lambda: engine.write_texts([TEXT]))
    assert done and isinstance(result, Exception) and "lock" in str(result) and str(tmp_path) not in str(result)
