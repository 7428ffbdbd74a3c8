"""Uploads that try to starve the server, against a real ``python -m serving serve``: a header flood, a
drip-fed body, and more upload bytes at once than the server-wide budget allows."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import Server, start_server

MIB = 1024 * 1024
BOUNDARY = "xmreidboundary"


def _answer(sock: socket.socket, timeout: float) -> tuple[int, bytes]:
    """The status and the raw head + body read until the server closes or 10 s pass."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), None)
            if length is not None and len(body) >= length:
                break
    return int(data.split(b" ", 2)[1]), data


def _multipart_head(declared: int, path: str = "/search/batch") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode()


@pytest.fixture(scope="module")
def small_limits(tiny_onnx: Path, tiny_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server whose limits make the budget small: 1 MiB files, 2 per request (3 MiB bodies), a 4 MiB budget,
    a 1 s body timeout and a 2000 bytes/s minimum rate."""
    log = tmp_path_factory.mktemp("budget") / "server.log"
    server = start_server(tiny_onnx, tiny_gallery, log, args=[
        "--max-upload-bytes", str(MIB), "--max-images-per-request", "2", "--max-track-crops", "2",
        "--upload-budget-bytes", str(4 * MIB), "--body-timeout-s", "1", "--min-body-rate", "2000",
        "--max-header-bytes", str(16 * 1024)])
    yield server
    server.stop()


def test_a_header_flood_is_answered_431_after_the_header_cap(small_limits: Server) -> None:
    sent = 0
    with socket.create_connection(("127.0.0.1", small_limits.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        line = b"X-Pad: " + b"a" * 1000 + b"\r\n"
        try:
            while sent < 20 * MIB:
                sock.sendall(line)
                sent += len(line)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, raw = _answer(sock, timeout=5)
    assert status == 431 and b"request_head_too_large" in raw
    print(f"header flood: 431 after {sent / 1024:.0f} KiB sent")
    assert sent < 4 * MIB  # the connection ended near the 16 KiB cap, not after megabytes


def test_a_drip_fed_body_is_ended_by_the_minimum_rate(small_limits: Server) -> None:
    """One byte every 0.4 s never trips the 1 s gap timeout; the 2000 bytes/s minimum rate ends it."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", small_limits.port), timeout=10) as sock:
        sock.sendall(_multipart_head(100_000))
        status = None
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b"\x00")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.4)
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break
            except TimeoutError:
                continue
        status, raw = _answer(sock, timeout=5)
    elapsed = time.monotonic() - started
    assert status == 408 and b"too slowly" in raw, raw
    assert elapsed < 6, f"the drip-fed upload was ended after {elapsed:.1f} s"


def test_uploads_beyond_the_budget_get_503_with_retry_after_and_the_budget_comes_back(small_limits: Server) -> None:
    """Two bodies of 3 MiB do not fit in a 4 MiB budget at once: while the first holds 2 MiB, the second is
    refused before its body is read; once the first is answered, the same upload is admitted."""
    declared = 3 * MIB
    first = socket.create_connection(("127.0.0.1", small_limits.port), timeout=10)
    try:
        first.sendall(_multipart_head(declared) + bytes(2 * MIB))
        time.sleep(0.5)  # the server has read what was sent: 2 MiB held against the budget
        with socket.create_connection(("127.0.0.1", small_limits.port), timeout=10) as second:
            second.sendall(_multipart_head(declared))
            status, raw = _answer(second, timeout=5)
        assert status == 503 and b"uploads_busy" in raw and b"retry-after: 1" in raw.lower(), raw
        # The first upload goes on: finish its body (the bytes are not an image, so the server says 400/413).
        rest = declared - len(_multipart_head(declared).split(b"\r\n\r\n", 1)[1]) - 2 * MIB
        first.sendall(bytes(max(0, rest)))
        status_first, _ = _answer(first, timeout=10)
        assert status_first in (400, 413, 415, 422)
    finally:
        first.close()
    with socket.create_connection(("127.0.0.1", small_limits.port), timeout=10) as again:
        again.sendall(_multipart_head(declared))
        again.settimeout(0.5)
        with pytest.raises(TimeoutError):
            again.recv(1)  # admitted: the server waits for the body instead of answering 503


def test_concurrent_small_uploads_within_the_budget_all_pass(small_limits: Server, ir_queries) -> None:
    """The budget does not get in the way of ordinary traffic: 16 concurrent searches all answer 200."""
    import httpx

    data = ir_queries[0].path.read_bytes()
    statuses: list[int] = []

    def one() -> None:
        with httpx.Client(timeout=30) as client:
            response = client.post(f"{small_limits.base}/search", files={"image": ("q.jpg", data, "image/jpeg")})
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
