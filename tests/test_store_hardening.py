"""Store details the hostile-input review found: lock files, symbolic links, orphans, I/O errors."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time

import pytest
from test_store import fake_memory

from gradmem.core import memory_file as memory_io
from gradmem.core.errors import DamagedMemory, StoreFull, StoreUnavailable
from gradmem.serve.store import MemoryStore, memory_key


def test_deleting_a_missing_id_makes_no_lock_file_and_locks_are_pruned(tmp_path):
    store = MemoryStore(tmp_path)
    for i in range(50):
        assert not store.delete(memory_key("fp", [i], {}))
    assert not list(store.locks.iterdir())  # 5,000 such deletes once left 5,000 lock files
    key = memory_key("fp", [1], {})
    store.get_or_write(key, lambda: fake_memory(1))
    assert [p.name for p in store.locks.iterdir()] == [f"{key}.lock"]
    assert store.delete(key) and not list(store.locks.iterdir())
    stale = store.locks / f"{memory_key('fp', [2], {})}.lock"
    stale.write_text("")  # left by a writer killed before it wrote anything
    assert store.clean() == 1 and not stale.exists()


def test_a_lock_removed_while_waiting_is_taken_again(tmp_path):
    store = MemoryStore(tmp_path)
    key = memory_key("fp", [3], {})
    path = store.locks / f"{key}.lock"
    holder = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process holds the lock
    seen: list[bool] = []

    def waiter() -> None:
        with store.lock(key):
            seen.append(path.exists())

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.2)  # the waiter has opened the file and blocks in flock
    path.unlink()  # the holder prunes the lock file (its memory was deleted), then lets go
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    thread.join(10)
    assert seen == [True]  # the waiter noticed its file was gone and locked the current one instead


def test_symbolic_links_in_the_store_are_refused(tmp_path):
    store = MemoryStore(tmp_path / "store")
    key = memory_key("fp", [4], {})
    target = tmp_path / "precious.txt"
    target.write_text("do not touch")
    (store.locks / f"{key}.lock").symlink_to(target)
    with pytest.raises(StoreUnavailable, match="cannot lock the memory"):
        store.get_or_write(key, lambda: fake_memory(4))
    assert target.read_text() == "do not touch"
    other = memory_key("fp", [5], {})
    store.get_or_write(other, lambda: fake_memory(5))
    side = store.objects / f"{other}.json"
    real = tmp_path / "elsewhere.json"
    real.write_text(side.read_text())
    side.unlink()
    side.symlink_to(real)
    assert other not in store  # a link is not a memory
    assert store.list() == []


def test_damaged_sidecars_are_listed_as_damaged(tmp_path):
    store = MemoryStore(tmp_path)
    keys = [memory_key("fp", [i], {}) for i in range(3)]
    for i, key in enumerate(keys):
        store.get_or_write(key, lambda i=i: fake_memory(i))
    (store.objects / f"{keys[0]}.json").write_text("{not json")
    side = store.objects / f"{keys[1]}.json"
    side.write_text(json.dumps({**json.loads(side.read_text()), "num_vectors": "3"}))
    items, damaged = store.scan()
    assert [m["id"] for m in items] == [keys[2]]
    reasons = {d["id"]: d["damaged"] for d in damaged}
    assert reasons[keys[0]].startswith(f"memory {keys[0]} is not valid JSON")
    assert reasons[keys[1]] == f"memory {keys[1]} has unusable fields: num_vectors"
    with pytest.raises(DamagedMemory):
        store.show(keys[1])
    assert str(tmp_path) not in json.dumps(damaged)


def test_io_errors_are_typed_and_the_context_file_goes_with_a_failed_write(tmp_path, monkeypatch):
    store = MemoryStore(tmp_path)
    key = memory_key("fp", [6], {})

    def full(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(memory_io, "save_file", full)
    with pytest.raises(StoreFull, match="cannot write the memory: No space left on device") as caught:
        store.get_or_write(key, lambda: fake_memory(6), "the context")
    assert isinstance(caught.value, OSError) and str(tmp_path) not in str(caught.value)
    assert not list(store.objects.iterdir()) and not list(store.locks.iterdir())
    # a context file left by a writer killed between the context and the sidecar is cleaned
    (store.objects / f"{key}.context.txt").write_text("orphan")
    assert store.clean() == 1 and not list(store.objects.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(StoreUnavailable, match="cannot create the memory store: Not a directory"):
        MemoryStore(blocker / "store")
