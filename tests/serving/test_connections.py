"""Connection bounds (serving.api.connections) and the repeat filter (serving.core.logfilter), on a tiny app.

A real uvicorn server runs in a thread with the bounded protocol over a trivial ASGI app, so the checks
are about sockets and timers, not the model.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import uvicorn

from serving.api import connections
from serving.core.logfilter import RepeatFilter


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["h11", "httptools"])
def bounded_server(request):
    """A server with the bounded protocol over each HTTP parser (both must keep the bounds)."""
    started: list[uvicorn.Server] = []

    def make(header_timeout_s: float = 0.5, max_connections: int = 100) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = uvicorn.Config(_app, host="127.0.0.1", port=port, log_level="error", lifespan="off",
                                http=connections.protocol_class(header_timeout_s, max_connections,
                                                                parser=request.param),
                                limit_concurrency=max_connections)
        server = uvicorn.Server(config)
        threading.Thread(target=server.run, daemon=True).start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started.append(server)
        return port

    yield make
    for server in started:
        server.should_exit = True


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return data
        if not chunk:
            return data
        data += chunk


def test_a_connection_that_sends_nothing_gets_408_and_is_closed(bounded_server) -> None:
    port = bounded_server(header_timeout_s=0.5)
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as idle:
        answer = _read_all(idle)
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"request_timeout"' in answer
    assert 0.4 < time.perf_counter() - started < 3.0


def test_a_request_head_sent_too_slowly_is_cut_off(bounded_server) -> None:
    port = bounded_server(header_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.perf_counter()
        assert _read_all(slow).startswith(b"HTTP/1.1 408 ")
        assert time.perf_counter() - started < 3.0


def test_a_prompt_request_is_served_and_keep_alive_still_works(bounded_server) -> None:
    port = bounded_server(header_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", port)) as client:
        for _ in range(2):
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            client.settimeout(5)
            answer = b""
            while not answer.endswith(b"ok"):
                answer += client.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(0.2)  # under the header timeout between requests


def test_connections_over_the_cap_get_503_at_once(bounded_server) -> None:
    port = bounded_server(header_timeout_s=5.0, max_connections=3)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as extra:
            started = time.perf_counter()
            extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_all(extra)
            assert answer.startswith(b"HTTP/1.1 503 ") and b'"overloaded"' in answer and b"retry-after" in answer
            assert time.perf_counter() - started < 1.0
    finally:
        for sock in held:
            sock.close()


def test_the_cap_fits_under_the_descriptor_limit(monkeypatch, caplog) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (256, 4096))
    with caplog.at_level(logging.WARNING):
        limit, backlog = connections.fit_to_descriptors(1000, 2048)
    assert limit == 256 - connections.FD_RESERVE and 4 <= backlog <= 16
    assert limit + connections.LINGER_SLOTS + 3 * backlog + 40 <= 256  # a burst cannot exhaust descriptors
    assert "RLIMIT_NOFILE 256" in caplog.text
    monkeypatch.setattr(resource, "getrlimit", lambda which: (65536, 65536))
    assert connections.fit_to_descriptors(1000, 2048) == (1000, 2048)


def _record(msg: str, level: int = logging.ERROR, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord("asyncio", level, __file__, 1, msg, ("x",), exc_info)


def test_repeat_filter_lets_one_through_per_interval_with_a_count() -> None:
    now = [0.0]
    limiter = RepeatFilter(10.0, clock=lambda: now[0])
    accept = "socket.accept() out of system resource: %s"
    error = OSError(24, "Too many open files")
    assert limiter.filter(_record(accept, exc=error))  # the first one, with its traceback
    assert not any(limiter.filter(_record(accept, exc=error)) for _ in range(500))
    assert limiter.filter(_record("another kind of error %s"))  # other kinds are counted apart
    assert limiter.filter(_record("info %s", level=logging.INFO))  # below WARNING: never limited
    now[0] = 10.5
    summary = _record(accept, exc=error)
    assert limiter.filter(summary)
    assert "[and 500 more like this in the last 10 s]" in summary.getMessage() and summary.exc_info is None
    assert not limiter.filter(_record(accept, exc=error))


def test_parser_choice_resolves_and_names_a_missing_package(monkeypatch) -> None:
    assert connections.resolve_parser("auto") == "httptools"  # installed with the project (requirements.txt)
    assert connections.protocol_class(1.0, 10, parser="h11").__name__ == "BoundedH11Protocol"
    assert connections.protocol_class(1.0, 10).__name__ == "BoundedHttpToolsProtocol"
    with pytest.raises(ValueError, match="valid: auto, httptools, h11"):
        connections.resolve_parser("h2")
    import sys

    monkeypatch.setitem(sys.modules, "httptools", None)  # as if not installed
    assert connections.resolve_parser("auto") == "h11"
    with pytest.raises(ValueError, match="httptools package is not installed"):
        connections.resolve_parser("httptools")
