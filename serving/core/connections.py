"""Bounded connections: a header-read timeout and an early refusal beyond the connection cap.

uvicorn limits requests in flight (``limit_concurrency``: beyond it a request gets 503) and closes idle
keep-alive connections (``timeout_keep_alive``), but a connection that never sends a request is kept for
ever: with a few hundred of them the process runs out of file descriptors, ``accept`` fails, and new
clients hang instead of being refused (issue 17). :func:`protocol_class` returns uvicorn's h11 protocol
with two additions:

* **header timeout**: a connection that has not completed a request head ``header_timeout_s`` after it
  opened (or after its previous response) is answered ``408`` and closed;
* **early shedding**: a connection accepted while ``max_connections`` are already open is closed after
  ``shed_after_s`` (a second at most) unless its request arrives first, which uvicorn then answers 503.
  An idle flood is thereby turned away within about a second, keeping descriptors free for real clients.

:func:`effective_connection_limit` keeps the cap under the process's ``RLIMIT_NOFILE`` with room for the
files the server itself opens (model, gallery, logs, upload spools), so the cap, not the kernel, refuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

FD_RESERVE = 64  # descriptors kept for the server's own files beyond its connections

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")
_408_BODY = b'{"error": "request_timeout", "detail": "the request head did not arrive in time"}'


def effective_connection_limit(configured: int, reserve: int = FD_RESERVE) -> int:
    """``configured``, lowered to fit under the soft ``RLIMIT_NOFILE`` minus ``reserve`` (at least 8)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return configured
    if soft == resource.RLIM_INFINITY:
        return configured
    fitted = max(8, int(soft) - reserve)
    if fitted < configured:
        logger.warning("connection limit lowered from %d to %d to stay under the open-file limit (RLIMIT_NOFILE "
                       "%d, %d kept for the server's own files); raise `ulimit -n` to allow more", configured,
                       fitted, soft, reserve)
        return fitted
    return configured


def protocol_class(header_timeout_s: float, max_connections: int, shed_after_s: float = 1.0) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and early shedding (see the module docstring).

    Args:
        header_timeout_s: how long a connection may take to send a complete request head.
        max_connections: connections beyond this many are shed (uvicorn's ``limit_concurrency``).
        shed_after_s: how long a connection over the cap may take to send its request (for its 503).
    """

    class BoundedH11Protocol(H11Protocol):
        """H11Protocol that closes connections which do not send a request head in time."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            over = len(self.connections) > max_connections
            self._arm_head_timer(min(shed_after_s, header_timeout_s) if over else header_timeout_s)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer(header_timeout_s)  # the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _arm_head_timer(self, seconds: float) -> None:
            self._cancel_head_timer()
            self._head_cycle = self.cycle  # a new cycle is created once a request head is complete
            self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(seconds, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._head_cycle:
                return  # closed already, or a request head arrived: uvicorn handles it from here
            if self.cycle is None or self.cycle.response_complete:
                self.transport.write(_408 % (len(_408_BODY), _408_BODY))
            self.transport.close()

    return BoundedH11Protocol
