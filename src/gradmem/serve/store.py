"""A content-addressed memory store: a directory of memory files keyed by what produced them.

The key of a memory is a hash of the model fingerprint, the context token ids and the write
settings, so writing the same document twice with the same model and settings finds the first
memory instead of computing it again. Layout:

    ROOT/objects/<id>.context.txt  the context text (kept so `inspect` can score reconstruction)
    ROOT/objects/<id>.safetensors  the memory tensor
    ROOT/objects/<id>.json         its sidecar (written last: a memory exists iff its sidecar does)
    ROOT/locks/<id>.lock           an fcntl lock file per key, removed again once no memory has the key

Every file is written to a unique temporary name and renamed, so a crash mid-write leaves no half
file under a final name; what a killed writer leaves (temporary files, a context or tensor without
a sidecar, a lock of a missing memory) is removed by `clean`. Writers of the same key serialise on
an exclusive lock (processes and threads alike), and the second one finds the memory the first
wrote. Store files are opened without following symbolic links. File-system errors surface as
StoreFull / StoreUnavailable with the reason and no path, damaged memories as DamagedMemory.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradmem.core.errors import DamagedMemory, GradmemError, NotFound, StoreFull, StoreUnavailable
from gradmem.core.files import atomic_write_text
from gradmem.core.memory_file import (
    SpecialFile,
    check_sidecar,
    memory_paths,
    read_bytes,
    read_sidecar,
    write_memory_files,
)

ID_PATTERN = re.compile(r"\A[0-9a-f]{32}\Z")  # \Z, not $: "$" would also accept a trailing newline
ProduceFn = Callable[[], tuple[Any, dict[str, Any]]]  # -> ((1, P, D) prefix tensor, sidecar)
FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def memory_key(fingerprint: str, context_ids: list[int], write_settings: dict[str, Any]) -> str:
    """The store id of a memory: 32 hex digits of SHA-256 over model, context and write settings."""
    payload = json.dumps(
        {"model": fingerprint, "context": [int(i) for i in context_ids], "write": write_settings}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Turn an OSError into StoreFull (no space or quota) or StoreUnavailable, saying what failed
    and why without the path: these messages reach HTTP clients."""
    try:
        yield
    except GradmemError:
        raise
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else type(err).__name__
        raise (StoreFull if err.errno in FULL else StoreUnavailable)(f"cannot {action}: {why}") from err


def _is_file(path: Path) -> bool:
    """A regular file, not a symbolic link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _same_file(path: Path, fd: int) -> bool:
    """Whether `path` still names the file open as `fd`."""
    try:
        here, there = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


class MemoryStore:
    """Memories on disk under `root`, addressed by `memory_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.locks = self.root / "locks"
        with store_errors("create the memory store"):
            self.objects.mkdir(parents=True, exist_ok=True)
            self.locks.mkdir(parents=True, exist_ok=True)
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _check_id(self, memory_id: str) -> str:
        if not isinstance(memory_id, str) or not ID_PATTERN.match(memory_id):
            raise NotFound(f"not a memory id: {memory_id!r} (32 lowercase hex digits)")
        return memory_id

    def path(self, memory_id: str) -> Path:
        """The memory's path without suffix (what gradmem.core.memory_file's functions take)."""
        return self.objects / self._check_id(memory_id)

    def context_path(self, memory_id: str) -> Path:
        return self.objects / f"{self._check_id(memory_id)}.context.txt"

    def __contains__(self, memory_id: str) -> bool:
        try:
            return _is_file(memory_paths(self.path(memory_id))[1])
        except NotFound:
            return False

    @contextmanager
    def lock(self, memory_id: str) -> Iterator[None]:
        """Exclusive lock on one key, across processes (fcntl) and threads of this process. The lock
        file is removed on the way out when no memory has the key, so locks do not pile up."""
        path = self.locks / f"{self._check_id(memory_id)}.lock"
        with self._guard:
            thread_lock = self._thread_locks.setdefault(memory_id, threading.Lock())
        with thread_lock, store_errors("lock the memory"):
            fd = self._locked_fd(path)
            try:
                yield
            finally:
                if memory_id not in self and _same_file(path, fd):
                    path.unlink()  # still holding the lock: waiters notice, see _locked_fd
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @staticmethod
    def _locked_fd(path: Path) -> int:
        """Open and flock `path` (never through a symbolic link). If the file was removed while we
        waited, our lock is on an orphan: open the current file and lock again."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        while True:
            fd = os.open(path, flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            if _same_file(path, fd):
                return fd
            os.close(fd)

    def get_or_write(
        self, memory_id: str, produce: ProduceFn, context_text: str | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Return (sidecar, created). Calls `produce` only if no memory with this id exists yet."""
        with self.lock(memory_id):
            if memory_id in self:
                return self.show(memory_id), False
            prefix, sidecar = produce()
            sidecar = {**sidecar, "id": memory_id}
            context = self.context_path(memory_id)
            try:
                with store_errors("write the memory"):
                    if context_text is not None:
                        atomic_write_text(context, context_text)
                    write_memory_files(self.path(memory_id), prefix, sidecar)
            except BaseException:
                if memory_id not in self:  # a failed write leaves no context file behind
                    context.unlink(missing_ok=True)
                raise
            return sidecar, True

    def show(self, memory_id: str) -> dict[str, Any]:
        """The sidecar of a memory; NotFound if there is none, DamagedMemory if it is unusable."""
        if memory_id not in self:
            raise NotFound(f"no memory {memory_id!r}")
        where = f"memory {memory_id}"
        with store_errors("read the memory"):
            try:
                meta = read_sidecar(self.path(memory_id), follow_symlinks=False, label=where)
            except FileNotFoundError:  # deleted since the check above
                raise NotFound(f"no memory {memory_id!r}") from None
        check_sidecar(meta, where)
        return meta

    def context(self, memory_id: str) -> str | None:
        """The stored context text, if it was kept."""
        path = self.context_path(memory_id)
        if not _is_file(path):
            return None
        with store_errors("read the memory's context"):
            try:  # never through a link, never a FIFO swapped in since the check above
                return read_bytes(path, follow_symlinks=False).decode("utf-8")
            except (FileNotFoundError, SpecialFile):  # deleted (or replaced) since the check
                return None
            except OSError as err:
                if err.errno == errno.ELOOP:
                    return None
                raise

    def scan(self) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(sidecars of all usable memories oldest first, [{"id", "damaged": reason}] of the others)."""
        with store_errors("list the memories"):
            sides = sorted(self.objects.glob("*.json"))
        items, damaged = self._read_sidecars(side.stem for side in sides if ID_PATTERN.match(side.stem))
        items.sort(key=lambda m: (str(m.get("created", "")), str(m.get("id", ""))))
        return items, damaged

    def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], list[dict[str, str]], int]:
        """One page of the store, oldest first: (usable sidecars, [{"id", "damaged": reason}] of the
        page's damaged memories, how many memories the store holds). Only the page's sidecars are
        read; the order comes from each sidecar's modification time (a sidecar is written last, when
        its memory is complete), so a page costs one `lstat` per memory and `limit` reads."""
        with store_errors("list the memories"):
            entries = []
            for side in self.objects.glob("*.json"):
                try:
                    info = os.lstat(side)
                except FileNotFoundError:  # deleted while listing
                    continue
                if ID_PATTERN.match(side.stem) and stat.S_ISREG(info.st_mode):
                    entries.append((info.st_mtime_ns, side.stem))
        entries.sort()
        items, damaged = self._read_sidecars(memory_id for _, memory_id in entries[offset : offset + limit])
        return items, damaged, len(entries)

    def _read_sidecars(self, memory_ids: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(the sidecars that read, [{"id", "damaged": reason}] of those that did not), in the given
        order; a memory deleted while listing is left out of both."""
        items, damaged = [], []
        for memory_id in memory_ids:
            try:
                items.append(self.show(memory_id))
            except NotFound:  # deleted while listing
                continue
            except (DamagedMemory, StoreUnavailable) as err:
                damaged.append({"id": memory_id, "damaged": str(err)})
        return items, damaged

    def list(self) -> list[dict[str, Any]]:
        """Sidecars of all usable memories, oldest first (damaged ones are left out; see `scan`)."""
        return self.scan()[0]

    def delete(self, memory_id: str) -> bool:
        """Remove a memory; False if it did not exist (no lock file is made for a missing id). The
        sidecar goes first, so a crash halfway leaves at most orphan files for `clean`."""
        if memory_id not in self:
            return False
        with self.lock(memory_id), store_errors("delete the memory"):
            if memory_id not in self:
                return False
            tensor, side = memory_paths(self.path(memory_id))
            side.unlink()
            tensor.unlink(missing_ok=True)
            self.context_path(memory_id).unlink(missing_ok=True)
            return True

    def clean(self) -> int:
        """Remove leftovers of crashed writers (temporary files, tensors and contexts without a
        sidecar) and lock files of missing memories; returns how many files went."""
        removed = 0
        with store_errors("clean the store"):
            for path in sorted(self.objects.iterdir()):
                memory_id = path.name.lstrip(".").split(".")[0]
                temporary = path.name.endswith(".tmp")
                if not ID_PATTERN.match(memory_id) or not (temporary or path.suffix in (".safetensors", ".txt")):
                    continue
                if temporary or memory_id not in self:
                    with self.lock(memory_id):
                        if (temporary or memory_id not in self) and os.path.lexists(path):
                            path.unlink()
                            removed += 1
            for path in sorted(self.locks.glob("*.lock")):
                if ID_PATTERN.match(path.stem) and path.stem not in self:
                    with self.lock(path.stem):  # removed on the way out when the memory is still missing
                        pass
                    removed += not os.path.lexists(path)
        return removed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.objects.iterdir() if p.is_file())
