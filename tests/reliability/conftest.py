"""Fixtures and helpers for the reliability and security tests (issue 10).

Builds on the session fixtures of ``tests/conftest.py`` (``sysu_root``, ``tiny_onnx``, ``tiny_gallery``) and
reuses the HTTP fixtures of ``tests/serving/conftest.py`` (``make_client``, ``gallery_copy``, ``ir_queries``,
``serving_embedder``) rather than copying them. Adds a real ``python -m serving serve`` process
(:func:`start_server`) for the tests that need a socket, process memory or ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

# Imported so that pytest registers them for this folder too (they are defined once, in tests/serving).
from tests.serving.conftest import gallery_copy, ir_queries, make_client, serving_embedder  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
JPEG = "image/jpeg"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (``VmRSS`` now, ``VmHWM`` the peak so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


@dataclass
class Server:
    """A running ``python -m serving serve`` child process on loopback."""

    proc: subprocess.Popen
    port: int
    log: Path
    argv: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_mib(self) -> float:
        return proc_status_kib(self.pid, "VmRSS") / 1024

    def peak_mib(self) -> float:
        return proc_status_kib(self.pid, "VmHWM") / 1024

    def cpu_s(self) -> float:
        """User + system CPU seconds the server process has used so far (``/proc/<pid>/stat``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Poll ``/readyz`` (never a fixed sleep) until 200, the process dies, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.output()[-3000:]}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait (graceful shutdown); SIGKILL if it does not stop in ``timeout`` seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """``kill -9``: no shutdown handler, no final save, nothing flushed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_server(model: Path, gallery: Path, log: Path, *, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, ready: bool = True, preexec_fn=None) -> Server:
    """Start ``python -m serving serve`` on a free loopback port, output to ``log`` (a file, not a pipe:
    a pipe nobody reads fills up under load and blocks the server). ``preexec_fn`` runs in the child
    before it starts (e.g. to lower ``RLIMIT_NOFILE``)."""
    port = free_port()
    argv = [sys.executable, "-m", "serving", "serve", "--model", str(model), "--gallery", str(gallery),
            "--port", str(port), *args]
    # Gallery changes without a key, as most of these tests make them; the access tests set keys or turn it off.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "XMREID_API_KEY": "",
                "XMREID_ALLOW_UNAUTHENTICATED_CHANGES": "true", **(env or {})}
    full_env.pop("XMREID_HOST", None)  # the default bind address is under test
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    server = Server(proc, port, log, argv)
    if ready:
        try:
            server.wait_ready()
        except BaseException:
            server.kill()
            raise
    return server


@pytest.fixture
def server_factory(tiny_onnx: Path, tmp_path: Path) -> Iterator:
    """``server_factory(gallery, *args, env=None)`` -> a ready :class:`Server`; all are stopped at teardown."""
    started: list[Server] = []

    def make(gallery: Path, *args: str, env: dict[str, str] | None = None, ready: bool = True) -> Server:
        log = tmp_path / f"server-{len(started)}.log"
        server = start_server(tiny_onnx, gallery, log, args=args, env=env, ready=ready)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()
