"""The memory store: content addressing, list/show/delete, atomic writes, concurrent writers."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from gradmem.core import memory_file as memory_io
from gradmem.core.hashing import tensor_sha256
from gradmem.core.memory_file import memory_paths
from gradmem.serve.store import MemoryStore, memory_key


def fake_memory(seed: int) -> tuple[torch.Tensor, dict]:
    prefix = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(seed))
    return prefix, {
        "tensor_sha256": tensor_sha256(prefix),
        "created": f"2026-01-01T00:00:{seed:02d}Z",
        "seed": seed,
        "num_vectors": 3,
        "hidden_size": 8,
        "blocks": 1,
        "dtype": "float32",
        "context_tokens": 2,
        "write": {},
        "write_loss": [],
    }


def test_key_depends_on_model_context_and_settings():
    key = memory_key("fp", [1, 2, 3], {"steps": 2})
    assert key == memory_key("fp", [1, 2, 3], {"steps": 2}) and len(key) == 32
    assert (
        len(
            {
                key,
                memory_key("fp2", [1, 2, 3], {"steps": 2}),
                memory_key("fp", [1, 2], {"steps": 2}),
                memory_key("fp", [1, 2, 3], {"steps": 3}),
            }
        )
        == 4
    )


def test_write_once_list_show_delete(tmp_path):
    store = MemoryStore(tmp_path)
    key = memory_key("fp", [1, 2], {})
    calls = []
    meta, created = store.get_or_write(key, lambda: calls.append(1) or fake_memory(1), "ab")
    again, created_again = store.get_or_write(key, lambda: calls.append(1) or fake_memory(2))
    assert created and not created_again and len(calls) == 1 and again == meta
    assert [m["id"] for m in store.list()] == [key] and store.show(key)["seed"] == 1
    assert store.context(key) == "ab"
    assert store.delete(key) and not store.delete(key) and key not in store and store.list() == []
    assert not any(store.objects.iterdir())
    with pytest.raises(KeyError, match="no memory"):
        store.show(key)
    with pytest.raises(KeyError, match="not a memory id"):
        store.path("../../etc/passwd")


def test_a_crash_mid_write_leaves_no_half_file(tmp_path, monkeypatch):
    store = MemoryStore(tmp_path)
    key = memory_key("fp", [1], {})

    def dies_halfway(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\x00" * 10)  # part of a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(memory_io, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        store.get_or_write(key, lambda: fake_memory(1))
    assert key not in store and store.list() == []
    tensor, side = memory_paths(store.path(key))
    assert not tensor.exists() and not side.exists()
    assert not [p for p in store.objects.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    # leftovers of a writer killed without cleanup (SIGKILL) are ignored and cleaned
    (store.objects / f".{key}.safetensors.abc.tmp").write_bytes(b"half")
    tensor.write_bytes(b"orphan without sidecar")
    assert key not in store and store.clean() == 2
    meta, created = store.get_or_write(key, lambda: fake_memory(1))
    assert created and key in store


def _writer(root: str | MemoryStore, keys: list[str], log: str) -> None:
    store = root if isinstance(root, MemoryStore) else MemoryStore(root)
    for key in keys:

        def produce(key=key):
            with open(log, "a") as f:  # O_APPEND: one line per real write
                f.write(key + "\n")
            time.sleep(0.05)  # widen the race window
            return fake_memory(int(key[:4], 16) % 50)

        store.get_or_write(key, produce)


def check_store(store: MemoryStore, keys: set[str], log: str) -> None:
    lines = open(log).read().split()
    assert sorted(lines) == sorted(keys), "every key must be written exactly once"
    assert {m["id"] for m in store.list()} == keys
    for key in keys:
        prefix = load_file(str(memory_paths(store.path(key))[0]))["prefix"]
        assert tensor_sha256(prefix) == store.show(key)["tensor_sha256"]
    assert not [p for p in store.objects.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_processes_write_each_key_once(tmp_path):
    shared = memory_key("fp", [0], {})
    keys = [[shared, memory_key("fp", [i + 1], {}), shared] for i in range(4)]
    log = str(tmp_path / "log")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "store"), k, log)) for k in keys]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    check_store(MemoryStore(tmp_path / "store"), {k for ks in keys for k in ks}, log)


def test_concurrent_threads_write_each_key_once(tmp_path):
    shared = memory_key("fp", [0], {})
    keys = [[shared, memory_key("fp", [i + 1], {})] for i in range(6)]
    log = str(tmp_path / "log")
    store_dir = str(tmp_path / "store")
    shared_store = MemoryStore(store_dir)  # threads share one instance, half of them
    threads = [
        threading.Thread(target=_writer, args=(shared_store if i % 2 else store_dir, k, log))
        for i, k in enumerate(keys)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check_store(MemoryStore(store_dir), {k for ks in keys for k in ks}, log)
    assert os.path.isdir(os.path.join(store_dir, "locks"))


def _killed_mid_write(root: str, key: str) -> None:
    def dies(tensors, path):
        with open(path, "wb") as f:
            f.write(b"\x00" * 10)
            f.flush()
        os.kill(os.getpid(), 9)  # SIGKILL: no cleanup of any kind runs

    memory_io.save_file = dies
    MemoryStore(root).get_or_write(key, lambda: fake_memory(1))


def test_a_writer_killed_mid_write_leaves_no_half_file(tmp_path):
    key = memory_key("fp", [7], {})
    proc = multiprocessing.get_context("fork").Process(target=_killed_mid_write, args=(str(tmp_path), key))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -9
    store = MemoryStore(tmp_path)
    assert key not in store and store.list() == []
    assert not any(p.name.startswith(key) for p in store.objects.iterdir())  # only a hidden temp file
    assert store.clean() == 1 and not any(store.objects.iterdir())  # the temporary file; the dead lock goes too
    assert not any(store.locks.iterdir())
    meta, created = store.get_or_write(key, lambda: fake_memory(1))  # the lock died with the process
    assert created and key in store
