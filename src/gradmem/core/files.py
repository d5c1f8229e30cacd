"""The two file primitives every saved artefact shares: an atomic write and a file checksum.

Checkpoints, memory files, the store's context files, a run's metrics log, converted pretrained
models and the benchmarks' records all replace a file in one step through `atomic_write`, and
every manifest hashes its files with `file_sha256`. Writing them once keeps the durability rules
(unique temporary name, fsync before the rename, the temporary removed on any error) the same for
all of them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CHUNK = 1 << 22  # bytes hashed per read: large files are never held whole


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a file or a folder (its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path), fsync, then rename onto `path`: readers see the old file or the new
    one, never half of one. The temporary name is unique, so concurrent writers never share it; on
    any error it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_copy(source: str | Path, target: str | Path) -> None:
    """Copy a file so that `target` is the whole copy or is left as it was."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
