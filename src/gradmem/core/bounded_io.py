"""Reading the files a user names, and stdin, with a bound on their size checked before reading.

A regular file larger than its bound is refused from its size alone, before a byte is read. A
pipe, a FIFO or a device (stdin, `/dev/zero`, `/dev/urandom`) has no size: at most bound + 1 bytes
are read from it and more is refused. Nothing larger than the bound is ever held in memory, and
the refusal is a LimitExceeded naming what was read and the bound, never a MemoryError. Text that
is not UTF-8 is an InvalidInput naming the first bad byte's offset.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from gradmem.core.errors import InvalidInput, LimitExceeded

TEXT_LIMIT = 16 << 20  # a context, a question file: far beyond what a model writes or reads
DATA_LIMIT = 256 << 20  # an evaluation data file (JSONL)
SMALL_LIMIT = 1 << 20  # the JSON of a checkpoint or a run spec (spec, manifest, backbone reference)


def _too_large(what: str, limit: int) -> LimitExceeded:
    return LimitExceeded(f"{what} is larger than the limit of {limit} bytes ({limit >> 20} MiB)")


def read_stream(stream: IO, limit: int, what: str) -> bytes | str:
    """At most `limit` bytes (or characters, for a text stream) of an open stream; LimitExceeded if
    it holds more."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise _too_large(what, limit)
    return data


def read_limited(path: str | Path, limit: int, what: str) -> bytes:
    """The bytes of the file at `path`; LimitExceeded if it has more than `limit`, known from its
    size for a regular file (nothing is read) and from reading at most limit + 1 bytes otherwise."""
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise _too_large(f"{what} ({info.st_size} bytes)", limit)
        data = read_stream(f, limit, what)
    assert isinstance(data, bytes)
    return data


def decode(data: bytes | str, what: str) -> str:
    """UTF-8 text (a leading byte-order mark dropped); InvalidInput naming the first bad byte."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"{what} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def read_limited_text(path: str | Path, limit: int, what: str) -> str:
    """The UTF-8 text of the file at `path`, bounded as `read_limited`."""
    return decode(read_limited(path, limit, what), what)


def text_lines(text: str) -> list[str]:
    """The lines of a text as a file opened in text mode gives them (universal newlines), without
    their ends; unlike str.splitlines, characters such as U+2028 inside a JSON string split nothing."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
