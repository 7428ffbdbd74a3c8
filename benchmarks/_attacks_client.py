"""The attacker's tools for ``benchmarks.attacks``: raw HTTP over sockets, hostile bodies, and what the server holds.

A hostile client does what ``httpx`` will not: it declares one body length and sends another, sends a body one
byte per TCP segment or one byte per second, or never finishes its headers. So these helpers speak HTTP/1.1
over a plain socket. The server's side is read from ``/proc/<pid>``: its resident memory (``VmRSS``, and the
high-water mark ``VmHWM``) and the bytes of temporary files it holds in its own ``TMPDIR`` (spooled upload
parts are unlinked at once, so they are found through the process's open descriptors, not by listing the
folder).

Everything here is the same for every server measured: one client, two servers.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024


# -- raw HTTP ----------------------------------------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``http://host:port``."""
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_head(method: str, path: str, url: str, headers: dict[str, str] | None = None,
                 content_length: int | None = None) -> bytes:
    """An HTTP/1.1 request head (request line, ``Host``, the given headers, ``Content-Length``, blank line)."""
    host, port = address(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def connect(url: str, *, nodelay: bool = False, sndbuf: int | None = None, timeout_s: float = 30.0) -> socket.socket:
    """A connected TCP socket to the server (``TCP_NODELAY`` and a small send buffer on request)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.settimeout(timeout_s)
    sock.connect(address(url))
    return sock


def answered(sock: socket.socket) -> bool:
    """True when the server has sent something (an answer) or closed: the socket is readable right now."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def read_status(sock: socket.socket, timeout_s: float = 10.0) -> int | None:
    """The status code of the answer waiting on ``sock`` (None: closed or reset without one, or no answer in time).

    Reads the whole answer when it has a ``Content-Length`` (so the connection can be closed cleanly).
    """
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:  # reset, or the timeout
        pass
    if not data.startswith(b"HTTP/"):
        return None
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


@dataclass
class Sent:
    """What one hostile request achieved: status (None: none came), bytes sent, seconds until it ended."""

    status: int | None = None
    bytes_sent: int = 0
    seconds: float = 0.0
    answered_early: bool = False  # the server answered (or closed) before the client finished sending
    error: str | None = None


def send_request(url: str, head: bytes, body: Iterable[bytes | memoryview], *, read_timeout_s: float = 60.0,
                 nodelay: bool = False, check_every: int = 1, stop_at: float | None = None) -> Sent:
    """Send ``head`` then the ``body`` pieces, stopping early when the server answers or closes; then read the status.

    Args:
        url: the server.
        head: the request head.
        body: the pieces to send, in order (each one ``sendall``).
        read_timeout_s: how long to wait for the answer once the body is sent.
        nodelay: ``TCP_NODELAY`` (each piece its own segment).
        check_every: look for an early answer every this many pieces (1-byte pieces: checking each is costly).
        stop_at: a ``time.monotonic()`` deadline after which no more pieces are sent.
    """
    started = time.monotonic()
    result = Sent()
    try:
        sock = connect(url, nodelay=nodelay)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    with sock:
        try:
            sock.sendall(head)
            for i, piece in enumerate(body):
                if i % check_every == 0 and answered(sock):
                    result.answered_early = True
                    break
                if stop_at is not None and time.monotonic() > stop_at:
                    break
                sock.sendall(piece)
                result.bytes_sent += len(piece)
        except OSError as exc:  # the server closed or reset mid-body
            result.answered_early = True
            result.error = type(exc).__name__
        result.status = read_status(sock, read_timeout_s)
    result.seconds = time.monotonic() - started
    return result


# -- bodies ------------------------------------------------------------------------------------------------

BOUNDARY = "xmreidattackboundary"


def multipart(parts: list[tuple[str, str, str, int]]) -> tuple[list[bytes], int]:
    """The framing of a multipart body whose file contents are sent separately.

    Args:
        parts: ``(field, filename, content type, content length)`` per part.

    Returns:
        ``(headers, total)``: the header text before each part (``headers[-1]`` is the closing boundary),
        and the body's total length once each part's content is sent after its header.
    """
    heads, total = [], 0
    for i, (name, filename, content_type, size) in enumerate(parts):
        lead = "\r\n" if i else ""
        heads.append((f"{lead}--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                      f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode())
        total += len(heads[-1]) + size
    heads.append(f"\r\n--{BOUNDARY}--\r\n".encode())
    total += len(heads[-1])
    return heads, total


def multipart_body(parts: list[tuple[str, str, str, bytes]]) -> bytes:
    """A whole multipart body (small bodies: built in memory)."""
    heads, _ = multipart([(n, f, t, len(d)) for n, f, t, d in parts])
    return b"".join(h + d for h, (_, _, _, d) in zip(heads, parts)) + heads[-1]


def multipart_type() -> str:
    return f"multipart/form-data; boundary={BOUNDARY}"


def bilevel_png(width: int, height: int) -> bytes:
    """A one-colour PNG at 1 bit per pixel: a few KB that decode to ``width x height`` pixels (3 bytes each)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte "none", then the packed bits (all black)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def one_byte_pieces(data: bytes) -> Iterable[memoryview]:
    """``data`` one byte at a time (as memoryview slices: no copy per byte)."""
    view = memoryview(data)
    return (view[i:i + 1] for i in range(len(view)))


# -- what the server holds ---------------------------------------------------------------------------------


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB (empty where ``/proc`` cannot say)."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def temp_bytes(pid: int, tmpdir: Path) -> int:
    """Bytes of the files under ``tmpdir``: those listed there plus unlinked ones ``pid`` still holds open."""
    root = str(tmpdir)
    total, seen = 0, set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        fds = []
    for fd in fds:
        link = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(link)
            if not target.startswith(root):
                continue
            st = os.stat(link)  # follows the descriptor, even to an unlinked file
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@dataclass
class Monitor:
    """Samples a process's memory (and temporary-file bytes) every ``interval_s`` in a thread, keeping the peaks.

    Use as a context manager; :meth:`mark` reads the current values at once.
    """

    pid: int
    tmpdir: Path | None = None
    interval_s: float = 0.05
    base: dict[str, int] = field(default_factory=dict)
    peak_rss_kib: int = 0
    peak_hwm_kib: int = 0
    peak_temp_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> dict[str, int]:
        mem = memory_kib(self.pid)
        self.peak_rss_kib = max(self.peak_rss_kib, mem.get("VmRSS", 0))
        self.peak_hwm_kib = max(self.peak_hwm_kib, mem.get("VmHWM", 0))
        if self.tmpdir is not None:
            self.peak_temp_bytes = max(self.peak_temp_bytes, temp_bytes(self.pid, self.tmpdir))
        return mem

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Monitor:
        self.base = memory_kib(self.pid)
        self.sample()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def growth_mib(self) -> dict[str, float]:
        """Peak ``VmRSS`` and ``VmHWM`` above the starting ``VmRSS``, and the peak temporary bytes, in MiB."""
        base = self.base.get("VmRSS", 0)
        return {"rss_start_mib": round(base / 1024, 1),
                "peak_rss_growth_mib": round((self.peak_rss_kib - base) / 1024, 1),
                "peak_hwm_growth_mib": round((self.peak_hwm_kib - base) / 1024, 1),
                "peak_temp_mib": round(self.peak_temp_bytes / MIB, 1)}
