"""Typed errors of gradmem: what went wrong, as a type, so that callers never parse messages.

The HTTP service maps these types to status codes in one table (`gradmem.serve.http_guard.STATUS`); the
command line prints any of them as one line and exits 2. Each also derives from the built-in type
older callers catch (ValueError, KeyError, OSError, RuntimeError), so existing code keeps working.
"""

from __future__ import annotations


class GradmemError(Exception):
    """Base of every error gradmem raises on purpose."""


class InvalidInput(GradmemError, ValueError):
    """A request or argument that can never succeed as given (empty text, unknown characters, ...)."""


class LimitExceeded(GradmemError, ValueError):
    """A request larger than a configured budget; the message names the limit."""


class NotFound(GradmemError, KeyError):
    """No memory with this id (or not a memory id at all)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class DamagedMemory(GradmemError, ValueError):
    """A stored memory whose files are unreadable, inconsistent or tampered with."""


class StoreFull(GradmemError, OSError):
    """The store's file system has no space (or quota) left."""


class StoreUnavailable(GradmemError, OSError):
    """The store cannot be read or written (read-only, permissions, I/O error)."""


class Overloaded(GradmemError, RuntimeError):
    """The server could not finish the request in time (deadline passed or queue full)."""


class Unauthorized(GradmemError, PermissionError):
    """A request without the API key the server requires."""


class ConfigError(GradmemError, ValueError):
    """A run spec with unknown keys, wrong types or impossible values."""


class CheckpointError(GradmemError, ValueError):
    """A checkpoint folder that is missing parts, damaged, or does not match its checksums."""


class TrainingDiverged(GradmemError, RuntimeError):
    """Training produced a non-finite loss or gradient; no checkpoint was written from it."""


class OutOfDeviceMemory(GradmemError, RuntimeError):
    """A step did not fit the device's memory; the message names the batch size to lower."""
