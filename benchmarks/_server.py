"""Run ``python -m serving serve`` as a subprocess on a free loopback port, for the HTTP benchmarks.

A benchmark must measure the server a user runs, so it starts the real command line in its own process
(its own GIL, its own threads), waits for ``GET /readyz`` to answer 200 (polling a health endpoint rather
than sleeping, as STYLE.md asks) and stops it with SIGTERM, the graceful shutdown an orchestrator uses.
The server's output goes to a temporary log file, not a pipe: a pipe nobody reads fills up and blocks
the server mid-benchmark.

Typical use::

    with ServerProcess(model, gallery, extra_args=["--max-batch-size", "1"]) as server:
        httpx.get(server.url + "/readyz")
        counters = parse_metrics(httpx.get(server.url + "/metrics").text)
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from serving.errors import UserError

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout_s: float = 120.0, proc: subprocess.Popen | None = None,
               log_path: Path | None = None) -> dict:
    """Poll ``url/readyz`` until it answers 200.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000``.
        timeout_s: how long to wait (loading a big model can take a while).
        proc: the server process, so a crash is reported at once instead of after ``timeout_s``.
        log_path: the server's log, whose tail is quoted when it fails.

    Returns:
        The ``/readyz`` JSON body (model description and gallery size).

    Raises:
        UserError: the process exited or the server was not ready in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise UserError(f"the server exited with status {proc.returncode} before it was ready:\n"
                            f"{_tail(log_path)}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise UserError(f"the server at {url} was not ready after {timeout_s:.0f} s:\n{_tail(log_path)}")


def _tail(path: Path | None, chars: int = 3000) -> str:
    if path is None or not path.is_file():
        return "(no server log)"
    return path.read_text(errors="replace")[-chars:]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> ``{'name{labels}': value}`` (labels as the server wrote them).

    Enough for counters, gauges and histogram ``_sum``/``_count`` samples, which is all the benchmarks
    read; comments and unparsable lines are skipped.
    """
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
        except ValueError:
            continue
    return samples


def scrape(url: str) -> dict[str, float]:
    """``GET url/metrics``, parsed with :func:`parse_metrics`."""
    response = httpx.get(f"{url}/metrics", timeout=10.0)
    response.raise_for_status()
    return parse_metrics(response.text)


class ServerProcess:
    """``python -m serving serve`` in a subprocess; a context manager that starts and stops it.

    Args:
        model: the exported model (``--model``).
        gallery: the gallery directory (``--gallery``).
        extra_args: more ``serve`` options, e.g. ``["--max-batch-size", "1"]``.
        host: bind address (loopback: a benchmark exposes nothing).
        port: TCP port; a free one when None.
        env: extra environment variables for the server (e.g. thread counts).
        ready_timeout_s: how long to wait for ``/readyz``.
        launcher: the interpreter arguments that stand for ``-m serving`` (the default); a benchmark that
            measures a proposed change passes ``["-c", code]`` whose code patches and then runs the CLI.
        cpus: cores the server may run on (``sched_setaffinity`` before it starts, as ``taskset -c`` does, so
            every thread it starts inherits them and ONNX Runtime sizes its thread pool to them); None: all.
        cwd: the checkout whose ``serving`` package runs (``-m`` imports from the working directory); this
            repository by default, another worktree to measure an earlier version side by side.

    Attributes:
        url: the base URL once started.
        ready: the ``/readyz`` body once started.
        log_path: the server's combined stdout/stderr.
    """

    def __init__(self, model: Path, gallery: Path, extra_args: Sequence[str] = (), *, host: str = "127.0.0.1",
                 port: int | None = None, env: dict[str, str] | None = None, ready_timeout_s: float = 180.0,
                 launcher: Sequence[str] = ("-m", "serving"), cpus: set[int] | None = None,
                 cwd: Path | None = None) -> None:
        self.model, self.gallery = Path(model), Path(gallery)
        self.extra_args = list(extra_args)
        self.host = host
        self.port = port
        self.env = dict(env or {})
        self.ready_timeout_s = ready_timeout_s
        self.launcher = list(launcher)
        self.cpus = set(cpus) if cpus else None
        self.cwd = Path(cwd) if cwd is not None else REPO
        self.url = ""
        self.ready: dict = {}
        self.log_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int | None:
        """The server's process id (for a profiler), None before start."""
        return None if self._proc is None else self._proc.pid

    @property
    def command(self) -> list[str]:
        """The command line as recorded in the results (``python``; a ``-c`` launcher's code elided)."""
        shown = ["-c", "<patches>"] if self.launcher[:1] == ["-c"] else self.launcher
        pinned = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        return [*pinned, "python", *shown, *self._serve_args()]

    def _serve_args(self) -> list[str]:
        return ["serve", "--model", str(self.model), "--gallery", str(self.gallery),
                "--host", self.host, "--port", str(self.port), "--log-level", "warning", *self.extra_args]

    def start(self) -> "ServerProcess":
        """Start the server and wait until it is ready.

        Raises:
            UserError: the model or gallery is missing, or the server failed to become ready.
        """
        if not self.model.is_file():
            raise UserError(f"model file not found: {self.model}")
        if not self.gallery.is_dir():
            raise UserError(f"gallery directory not found: {self.gallery}")
        self.port = self.port or free_port(self.host)
        self.url = f"http://{self.host}:{self.port}"
        fd, name = tempfile.mkstemp(prefix="bench-server-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log = open(self.log_path, "wb")  # noqa: SIM115  # closed in stop()
        cmd = [sys.executable, *self.launcher, *self._serve_args()]
        logger.info("starting %s", " ".join(self.command))
        cpus = self.cpus
        self._proc = subprocess.Popen(cmd, cwd=self.cwd, env={**os.environ, **self.env}, stdout=self._log,
                                      stderr=subprocess.STDOUT,
                                      preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        try:
            self.ready = wait_ready(self.url, self.ready_timeout_s, self._proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (graceful shutdown), then SIGKILL if it does not exit in ``timeout_s``.

        Returns:
            The exit status, or None if it was never started.
        """
        rc = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("server %s did not stop in %.0f s; killing it", self.url, timeout_s)
                    self._proc.kill()
                    self._proc.wait()
            rc = self._proc.returncode
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.log_path is not None and rc == 0:
            self.log_path.unlink(missing_ok=True)  # keep the log only when something went wrong
        elif self.log_path is not None and rc is not None:
            logger.warning("server exited with status %s; its log is %s", rc, self.log_path)
        return rc

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
