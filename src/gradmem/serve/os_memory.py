"""Giving freed memory back to the operating system after a request's model work.

PyTorch's CPU tensors come from the C allocator, and glibc keeps the blocks a request freed for
later use instead of returning them: after many requests of different sizes a server held
gigabytes it no longer used. `malloc_trim(0)` returns them. It exists in glibc only; elsewhere
(musl, macOS) `release_freed_memory` does nothing and says so.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process, glibc's among them
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return the C heap's free blocks to the OS (glibc `malloc_trim(0)`); False where the C
    library has no such call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
