"""A content-addressed memory store: a directory of memory files keyed by what produced them.

The key of a memory is a hash of the model fingerprint, the context token ids and the write
settings, so writing the same document twice with the same model and settings finds the first
memory instead of computing it again. Layout:

    ROOT/objects/<id>.safetensors  the memory tensor
    ROOT/objects/<id>.json         its sidecar (written last: a memory exists iff its sidecar does)
    ROOT/objects/<id>.context.txt  the context text (kept so `inspect` can score reconstruction)
    ROOT/locks/<id>.lock           an fcntl lock file per key

Every file is written to a unique temporary name and renamed, so a crash mid-write leaves no half
file under a final name. Writers of the same key serialise on an exclusive lock (processes and
threads alike), and the second one finds the memory the first wrote.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from gradmem.memory_io import atomic_write, memory_paths, read_sidecar, write_memory_files

ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
ProduceFn = Callable[[], tuple[Any, dict[str, Any]]]  # -> ((1, P, D) prefix tensor, sidecar)


def memory_key(fingerprint: str, context_ids: list[int], write_settings: dict[str, Any]) -> str:
    """The store id of a memory: 32 hex digits of SHA-256 over model, context and write settings."""
    payload = json.dumps({"model": fingerprint, "context": [int(i) for i in context_ids],
                          "write": write_settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class MemoryStore:
    """Memories on disk under `root`, addressed by `memory_key`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        self.locks = self.root / "locks"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)
        self._thread_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _check_id(self, memory_id: str) -> str:
        if not isinstance(memory_id, str) or not ID_PATTERN.match(memory_id):
            raise KeyError(f"not a memory id: {memory_id!r} (32 lowercase hex digits)")
        return memory_id

    def path(self, memory_id: str) -> Path:
        """The memory's path without suffix (what memory_io functions take)."""
        return self.objects / self._check_id(memory_id)

    def context_path(self, memory_id: str) -> Path:
        return self.objects / f"{self._check_id(memory_id)}.context.txt"

    def __contains__(self, memory_id: str) -> bool:
        try:
            return memory_paths(self.path(memory_id))[1].exists()
        except KeyError:
            return False

    @contextmanager
    def lock(self, memory_id: str) -> Iterator[None]:
        """Exclusive lock on one key, across processes (fcntl) and threads of this process."""
        with self._guard:
            thread_lock = self._thread_locks.setdefault(memory_id, threading.Lock())
        with thread_lock:  # flock is per open file, so threads also need a lock of their own
            with open(self.locks / f"{self._check_id(memory_id)}.lock", "a") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def get_or_write(self, memory_id: str, produce: ProduceFn, context_text: str | None = None) -> tuple[dict[str, Any], bool]:
        """Return (sidecar, created). Calls `produce` only if no memory with this id exists yet."""
        with self.lock(memory_id):
            if memory_id in self:
                return self.show(memory_id), False
            prefix, sidecar = produce()
            sidecar = {**sidecar, "id": memory_id}
            if context_text is not None:
                context = self.context_path(memory_id)
                atomic_write(context, lambda tmp: Path(tmp).write_text(context_text, encoding="utf-8"))
            write_memory_files(self.path(memory_id), prefix, sidecar)
            return sidecar, True

    def show(self, memory_id: str) -> dict[str, Any]:
        """The sidecar of a memory; KeyError if there is none."""
        if memory_id not in self:
            raise KeyError(f"no memory {memory_id!r} in {self.root}")
        return read_sidecar(self.path(memory_id))

    def context(self, memory_id: str) -> str | None:
        """The stored context text, if it was kept."""
        path = self.context_path(memory_id)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def list(self) -> list[dict[str, Any]]:
        """Sidecars of all complete memories, oldest first."""
        items = []
        for side in self.objects.glob("*.json"):
            memory_id = side.stem
            if not ID_PATTERN.match(memory_id):
                continue
            try:
                items.append(read_sidecar(side))
            except (ValueError, FileNotFoundError):  # deleted or replaced while listing
                continue
        return sorted(items, key=lambda m: (m.get("created", ""), m.get("id", "")))

    def delete(self, memory_id: str) -> bool:
        """Remove a memory; False if it did not exist. The sidecar goes first, so a crash halfway
        leaves at most an orphan tensor, never a sidecar without its tensor."""
        with self.lock(memory_id):
            if memory_id not in self:
                return False
            tensor, side = memory_paths(self.path(memory_id))
            side.unlink()
            tensor.unlink(missing_ok=True)
            self.context_path(memory_id).unlink(missing_ok=True)
            return True

    def clean(self) -> int:
        """Remove leftovers of crashed writers (temporary files, orphan tensors); returns how many."""
        removed = 0
        for path in self.objects.iterdir():
            orphan = path.suffix == ".safetensors" and not path.with_suffix(".json").exists()
            if path.name.endswith(".tmp") or orphan:
                memory_id = path.name.lstrip(".").split(".")[0]
                if ID_PATTERN.match(memory_id):
                    with self.lock(memory_id):
                        if path.exists() and (path.name.endswith(".tmp") or not path.with_suffix(".json").exists()):
                            path.unlink()
                            removed += 1
        return removed

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.objects.iterdir() if p.is_file())
