"""Checkpoint folders written as one atomic directory switch, with SHA-256 checksums of every file.

A checkpoint is built completely in a hidden sibling folder (`.NAME.new-*`): weights, spec, trainer
state and last `manifest.json` (the SHA-256 of each file), all fsynced. Then the folder takes the
place of NAME in one step: Linux's renameat2(RENAME_EXCHANGE) swaps the two folders atomically;
where that is missing, NAME is renamed aside and the new folder renamed in, and `recover` repairs
the one moment in between (no NAME, a complete new folder beside it). Weights and trainer state
therefore always come from the same save. Loading checks the manifest and names what is wrong.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gradmem.core.bounded_io import SMALL_LIMIT, read_limited_text
from gradmem.core.errors import CheckpointError
from gradmem.core.files import file_sha256, fsync_path

MANIFEST = "manifest.json"


def write_folder(directory: str | Path, write_files: Any) -> Path:
    """Call write_files(tmp_folder) to fill a new folder, add its manifest and switch it in as
    `directory`. On any error the new folder is removed and `directory` is left as it was."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover(directory)
    new = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        write_files(new)
        files = sorted(p.name for p in new.iterdir())
        manifest = {"format": 1, "sha256": {name: file_sha256(new / name) for name in files}}
        (new / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for name in files + [MANIFEST]:
            fsync_path(new / name)
        fsync_path(new)
        _switch(new, directory)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return directory


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the C library or
    the file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _switch(new: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(new, directory)
    elif _exchange(new, directory):  # `new` now holds the previous checkpoint
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = directory.with_name(f".{directory.name}.old-{new.name.rsplit('-', 1)[-1]}")
        os.rename(directory, old)
        os.rename(new, directory)  # a crash right before this line is what `recover` repairs
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(directory.parent)


def recover(directory: str | Path) -> None:
    """Finish or undo a save that was interrupted, and remove its leftovers: with no `directory`,
    a complete new folder (its manifest verifies) takes its place, else the previous one returns.
    Only a writer of `directory` may call it: for anyone else a `.NAME.new-*` folder may be a save
    in progress, which touching would crash."""
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    new = sorted(directory.parent.glob(f".{directory.name}.new-*"))
    old = sorted(directory.parent.glob(f".{directory.name}.old-*"))
    if not directory.exists():
        complete = [n for n in new if not problems(n, (MANIFEST,))]  # the manifest is written last
        if complete:
            os.rename(complete[-1], directory)
        elif old:
            os.rename(old[-1], directory)
    for leftover in new + old:
        if leftover.exists():
            shutil.rmtree(leftover, ignore_errors=True)


def problems(directory: str | Path, needed: tuple[str, ...] = ()) -> list[str]:
    """What is wrong with a checkpoint folder: missing files, files whose SHA-256 differs from the
    manifest. A folder without a manifest (saved before checksums existed) is checked for presence only."""
    directory = Path(directory)
    if not directory.is_dir():
        return [f"{directory} is not a folder"]
    missing = [name for name in needed if not (directory / name).is_file()]
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return [f"{name} is missing" for name in missing]
    try:
        recorded = json.loads(read_limited_text(manifest_path, SMALL_LIMIT, MANIFEST))["sha256"]
    except (ValueError, KeyError, TypeError):
        return [f"{MANIFEST} is damaged"]
    if not _file_digests(recorded):
        return [f"{MANIFEST} is damaged (its sha256 must map file names in the folder to hex digests)"]
    found = [f"{name} is missing" for name in missing]
    for name, digest in recorded.items():
        path = directory / name
        if not path.is_file():
            if name not in missing:
                found.append(f"{name} is missing")
        elif file_sha256(path) != digest:
            found.append(f"{name} does not match its SHA-256 in {MANIFEST} (damaged or changed)")
    return found


def _file_digests(recorded: object) -> bool:
    """Whether a manifest's `sha256` is {plain file name: hex digest}: a name with a folder in it
    ("../x", "/dev/zero") would make `problems` hash a file outside the checkpoint."""
    return isinstance(recorded, dict) and all(
        isinstance(name, str)
        and isinstance(digest, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        for name, digest in recorded.items()
    )


def verify(directory: str | Path, needed: tuple[str, ...]) -> None:
    """CheckpointError naming every problem of the folder (see `problems`)."""
    found = problems(directory, needed)
    if found:
        raise CheckpointError(f"checkpoint {directory} is unusable: {'; '.join(found)}")
