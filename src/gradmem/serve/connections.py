"""A deadline for request headers, which uvicorn does not have.

uvicorn times out an idle keep-alive connection, but a connection that opens and sends its headers
slowly, or never finishes them, is held forever: enough of them use up the server's file
descriptors and its concurrency limit, and every other client is locked out. The protocol here is
uvicorn's own h11 protocol with one addition: each connection gets `header_timeout_s` to send a
complete request head, counted from when it opened or its previous response ended, else it is
closed. A request whose head has arrived is not affected (its body has BodyGuard's timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring).
    A subclass because uvicorn takes its HTTP protocol as a class (its `http` option)."""

    header_timeout_s = 10.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(None)

    def on_response_complete(self) -> None:
        finished = self.cycle  # a pipelined request may start inside super(): it is not waited for
        super().on_response_complete()
        self._arm(finished)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self, waiting_after: Any) -> None:
        """Close the connection unless a request newer than `waiting_after` (a cycle) has begun
        within the deadline."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._expire, waiting_after)

    def _expire(self, waiting_after: Any) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with a deadline of `seconds` for each request head."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": seconds})
