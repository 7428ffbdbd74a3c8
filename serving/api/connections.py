"""Bounded connections: a header-read timeout and an early refusal beyond the connection cap.

uvicorn limits requests in flight (``limit_concurrency``: beyond it a request gets 503) and closes idle
keep-alive connections (``timeout_keep_alive``), but a connection that never sends a request is kept for
ever: with a few hundred of them the process runs out of file descriptors, ``accept`` fails, and new
clients hang instead of being refused. :func:`protocol_class` returns uvicorn's HTTP/1.1
protocol — ``httptools`` (the C parser behind Node.js's, the default when installed) or ``h11`` (pure
Python) — with two additions:

* **header timeout**: a connection that has not completed a request head ``header_timeout_s`` after it
  opened (or after its previous response) is answered ``408`` and closed;
* **header size cap**: a connection whose request head (request line and headers) grows past
  ``max_header_bytes`` before it is complete is answered ``431`` and closed, so a client cannot make the parser
  chew on megabytes of headers (httptools sets no limit of its own);
* **early shedding**: a connection accepted while ``max_connections`` are already open is answered 503
  at once (before its request arrives: a client reads it as the answer to what it sends), its sending
  side is closed, and it is dropped ``shed_after_s`` later (reading, not parsing, whatever the client
  sends meanwhile, so that the client gets the 503 and not a reset). An idle flood is thereby turned away
  within a second, keeping descriptors free for real clients.

:func:`effective_connection_limit` keeps the cap under the process's ``RLIMIT_NOFILE`` with room for the
files the server itself opens (model, gallery, logs, upload spools), so the cap, not the kernel, refuses.

The event loop stays asyncio's by default: under descriptor exhaustion (tests/reliability/
test_limits_and_shutdown.py) uvloop sometimes closed a new client's connection with no answer, where asyncio
answers 200 or 503. ``--loop uvloop`` remains an opt-in for sites that never approach the descriptor limit.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

FD_RESERVE = 96  # descriptors kept beyond the connection cap: the server's own files, shedding, accept bursts
_BASE_FDS = 40  # what the server itself holds open (model, gallery lock, logs, epoll, upload spools), generously
LINGER_SLOTS = 8  # shed connections kept open for a moment so the client reads its 503; beyond, closed at once

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")
_408_BODY = b'{"error": "request_timeout", "detail": "the request head did not arrive in time"}'
_431_BODY = b'{"error": "request_head_too_large", "detail": "the request line and headers are larger than %d bytes"}'
_431 = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")
_503_BODY = (b'{"error": "overloaded", "detail": "the server holds as many connections as it accepts; '
             b'retry shortly"}')
_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_503_BODY), _503_BODY))


def effective_connection_limit(configured: int, reserve: int = FD_RESERVE) -> int:
    """``configured``, lowered to fit under the soft ``RLIMIT_NOFILE`` (see :func:`fit_to_descriptors`)."""
    return fit_to_descriptors(configured, 2048, reserve)[0]


def fit_to_descriptors(limit: int, backlog: int, reserve: int = FD_RESERVE) -> tuple[int, int]:
    """``(connection limit, accept backlog)`` that cannot exhaust the process's file descriptors.

    The connection cap is lowered to the soft ``RLIMIT_NOFILE`` minus ``reserve`` (or a quarter of it). The
    backlog matters too: asyncio accepts up to ``backlog`` connections per event-loop tick before any of them
    is looked at, and a couple of ticks pass before an over-cap one is closed; with a low descriptor limit, a
    burst larger than what is left makes ``accept`` fail (EMFILE), and asyncio then stops accepting for a
    whole second each time. So the backlog is lowered until three bursts fit in what the cap leaves.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, ValueError, OSError):
        return limit, backlog
    if soft == resource.RLIM_INFINITY:
        return limit, backlog
    # A quarter of the descriptors (at least `reserve`) stay out of the cap, so that the accept backlog left
    # over is not squeezed to a handful (a 1024 limit gives 768 connections and a backlog of ~70).
    fitted = max(8, min(limit, int(soft) - max(reserve, int(soft) // 4)))
    burst = max(4, min(backlog, (int(soft) - fitted - _BASE_FDS - LINGER_SLOTS) // 3))
    if fitted < limit or burst < backlog:
        logger.warning("connection limit %d and accept backlog %d (asked: %d, %d) to stay under the open-file "
                       "limit (RLIMIT_NOFILE %d); raise `ulimit -n` to allow more", fitted, burst, limit, backlog,
                       soft)
    return fitted, burst


PARSERS = ("auto", "httptools", "h11")


def resolve_parser(parser: str) -> str:
    """``auto`` -> ``httptools`` when it is installed, else ``h11``; an explicit choice must be importable.

    httptools parses a request head in C; h11's pure-Python parsing is among the largest costs outside the
    model per ``/search`` (benchmarks/results/http.md).
    """
    if parser not in PARSERS:
        raise ValueError(f"unknown HTTP parser {parser!r}; valid: {', '.join(PARSERS)}")
    if parser == "h11":
        return parser
    try:
        import httptools  # noqa: F401
    except ImportError:
        if parser == "httptools":
            raise ValueError("--http httptools: the httptools package is not installed "
                             "(pip install httptools)") from None
        return "h11"
    return "httptools"


def _base_protocol(parser: str) -> type:
    if resolve_parser(parser) == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    return H11Protocol


def protocol_class(header_timeout_s: float, max_connections: int, shed_after_s: float = 0.25,
                   parser: str = "auto", max_header_bytes: int = 64 * 1024) -> type:
    """uvicorn's HTTP protocol with a header timeout and early shedding (see the module docstring).

    Args:
        header_timeout_s: how long a connection may take to send a complete request head.
        max_connections: connections beyond this many are shed (uvicorn's ``limit_concurrency``).
        shed_after_s: how long a connection over the cap is kept after its 503 (so the client reads it). Beyond
            the cap plus half the descriptor reserve, connections are closed at once, without the 503: the
            reserve is for the server's own files.
        parser: ``auto``, ``httptools`` or ``h11`` (:func:`resolve_parser`); both uvicorn protocols keep
            ``cycle``, ``connections`` and ``on_response_complete``, which is all the additions use.
        max_header_bytes: the largest request head; bytes received while a head is incomplete count against it.
    """
    body_431 = _431_BODY % max_header_bytes
    answer_431 = _431 % (len(body_431), body_431)
    base = _base_protocol(parser)

    class BoundedProtocol(base):  # type: ignore[valid-type, misc]
        """uvicorn's protocol that closes connections which do not send a request head in time."""

        _shedding = False
        _head_bytes = 0

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections + LINGER_SLOTS:
                self._shedding = True
                transport.close()
                return
            if len(self.connections) > max_connections:
                self._shedding = True
                logger.warning("shedding a connection with 503: %d open, the limit is %d", len(self.connections),
                               max_connections)
                transport.write(_503)
                if transport.can_write_eof():
                    transport.write_eof()
                self._arm_head_timer(min(shed_after_s, header_timeout_s))
                return
            self._arm_head_timer(header_timeout_s)

        def data_received(self, data: bytes) -> None:
            if self._shedding:
                return  # answered already; read and drop what the client sends until it is closed
            waiting_for_head = not self._busy()
            super().data_received(data)
            if not waiting_for_head or self.transport.is_closing():
                return
            if self._busy():  # the head completed in this piece (what followed it is body)
                self._head_bytes = 0
                return
            self._head_bytes += len(data)
            if self._head_bytes > max_header_bytes:
                logger.warning("closing a connection whose request head passed %d bytes", max_header_bytes)
                self._shedding = True
                self._cancel_head_timer()
                self.transport.write(answer_431)
                self.transport.close()

        def on_response_complete(self) -> None:
            self._head_bytes = 0
            super().on_response_complete()  # may start the next (pipelined) request at once
            if not self.transport.is_closing() and not self._busy():
                self._arm_head_timer(header_timeout_s)  # the next request on this connection

        def _busy(self) -> bool:
            """A request head has arrived and its response is not finished: nothing to time out."""
            return self.cycle is not None and not self.cycle.response_complete

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
            if self._shedding:
                self.transport.close()
                return
            if self.transport.is_closing() or self._busy() or self.cycle is not self._head_cycle:
                return  # closed already, or a request head arrived: uvicorn handles it from here
            self.transport.write(_408 % (len(_408_BODY), _408_BODY))
            self.transport.close()

    BoundedProtocol.__name__ = BoundedProtocol.__qualname__ = f"Bounded{base.__name__}"
    return BoundedProtocol
