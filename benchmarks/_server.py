"""The pieces the HTTP benchmarks share: the real server as a subprocess, its variants, the query crops,
and a cProfile of its event loop.

``benchmarks.http`` and ``benchmarks.end_to_end`` both import from here and never from each other.

A benchmark must measure the server a user runs, so it starts the real command line in its own process
(its own GIL, its own threads), waits for ``GET /readyz`` to answer 200 (polling a health endpoint rather
than sleeping, as STYLE.md asks) and stops it with SIGTERM, the graceful shutdown an orchestrator uses.
The server's output goes to a temporary log file, not a pipe: a pipe nobody reads fills up and blocks
the server mid-benchmark.

The server is only ever configured through its command line (:data:`VARIANTS`): a benchmark measures what
a user runs, and patches nothing inside it. The one launcher that is not ``-m serving`` adds a cProfile
switch around the unchanged CLI (:func:`profiled_launcher`), for the profile tables.

Typical use::

    with ServerProcess(model, gallery, extra_args=["--max-batch-size", "1"]) as server:
        httpx.get(server.url + "/readyz")
        counters = parse_metrics(httpx.get(server.url + "/metrics").text)
"""

from __future__ import annotations

import contextlib
import gc
import logging
import mimetypes
import os
import pstats
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from benchmarks._machine import REPO
from serving.indexing.crawl import IMAGE_SUFFIXES
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
IR_CAMERAS = ("cam3", "cam6")  # SYSU-MM01's infrared cameras


# -- the request bodies ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One request body: the file name and its bytes."""

    name: str
    data: bytes

    @property
    def content_type(self) -> str:
        return mimetypes.guess_type(self.name)[0] or "application/octet-stream"


def load_queries(images: Path, limit: int = 256) -> list[Query]:
    """Infrared crops under ``images/cam3`` and ``images/cam6``, spread evenly over the sorted files.

    Args:
        images: a SYSU-MM01-layout dataset root (e.g. ``data/synthetic_sysu``).
        limit: most crops to keep (requests cycle through them).

    Returns:
        The crops, in a deterministic order.

    Raises:
        UserError: no infrared crops there.
    """
    files = sorted(p for cam in IR_CAMERAS if (images / cam).is_dir()
                   for p in (images / cam).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no infrared crops under {images}: expected {' and '.join(IR_CAMERAS)} folders of "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files (a SYSU-MM01-layout root such as "
                        "data/synthetic_sysu)")
    step = max(1, len(files) // max(1, limit))
    return [Query(str(p.relative_to(images)), p.read_bytes()) for p in files[::step][:limit]]


# -- server variants: serve options only -------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A server configuration to measure beside the default one.

    Attributes:
        description: what differs from the default, for the report.
        args: extra ``python -m serving serve`` options.
    """

    description: str
    args: tuple[str, ...] = ()


VARIANTS: dict[str, Variant] = {
    "default": Variant("the server's defaults"),
    "max-wait-5": Variant("`--max-wait-ms 5`: a lone request waits 5 ms for company (the default is 0)",
                          ("--max-wait-ms", "5")),
    "no-batching": Variant("`--max-batch-size 1`: every request is its own model call", ("--max-batch-size", "1")),
    "h11-asyncio": Variant("`--http h11 --loop asyncio`: the pure-Python HTTP parser on the stdlib event loop",
                           ("--http", "h11", "--loop", "asyncio")),
}


def server_env(extra_path: Path | None) -> dict[str, str]:
    """Environment for a server that imports the packages in ``extra_path`` first (None: no change).

    ``--extra-path`` of both HTTP benchmarks: measure the server with packages (or versions) this
    environment lacks, installed with ``pip install --target DIR``, without changing the environment.
    """
    if extra_path is None:
        return {}
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(extra_path), os.environ.get("PYTHONPATH")]))}


# -- cProfile of the server's event loop -------------------------------------------------------------------

# The unchanged CLI with cProfile on the main (event-loop) thread, switched on and off by SIGUSR1 so that
# start-up and shutdown (imports, model loading) stay out of it and only the requests sent while it is on are
# profiled. {timer} is cProfile's clock: empty for its default (wall) clock, or e.g. ``time.thread_time``.
_PROFILED = """
import cProfile, signal, sys, time
_prof, _on = cProfile.Profile({timer}), [False]
def _toggle(signum, frame):
    if _on[0]:
        _prof.disable()
        _prof.dump_stats({path!r})
    else:
        _prof.enable()
    _on[0] = not _on[0]
signal.signal(signal.SIGUSR1, _toggle)
from serving.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def profiled_launcher(path: Path, timer: str = "") -> list[str]:
    """Interpreter arguments that run ``python -m serving`` with a SIGUSR1 cProfile switch writing ``path``.

    Args:
        path: where the profile is written when the switch goes off.
        timer: cProfile's clock as a Python expression (default: cProfile's own wall clock).
    """
    return ["-c", _PROFILED.format(path=str(path), timer=timer)]


def profile_requests(server: ServerProcess, path: Path, send: Any) -> Any:
    """Switch the server's profiler on, call ``send()`` (the requests to profile), switch it off, wait for ``path``.

    Returns:
        What ``send`` returned.

    Raises:
        UserError: the server wrote no profile.
    """
    if server.pid is None:
        raise RuntimeError("profile_requests needs a started server")
    os.kill(server.pid, signal.SIGUSR1)
    time.sleep(0.2)
    result = send()
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.is_file():
        raise UserError(f"the profiled server wrote no profile to {path}")
    time.sleep(0.5)  # dump_stats writes in one go; let it finish
    return result


def profile_summary(path: Path, requests: int, top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Own time of the event-loop thread per request: by package, and the most expensive functions.

    Idle waiting (the loop's ``select``/``epoll``, lock waits) is left out: it is not work, and at
    concurrency 1 it is mostly the loop waiting for the worker threads that ``timings_ms`` already times.
    """
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    functions, packages = [], {}
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        if _idle(func):
            continue
        package = _package(filename)
        packages[package] = packages.get(package, 0.0) + tottime
        functions.append({"function": func, "where": f"{_short(filename)}:{line}", "package": package,
                          "calls_per_request": ncalls / requests, "own_ms_per_request": 1e3 * tottime / requests,
                          "cum_ms_per_request": 1e3 * cumtime / requests})
    total = sum(packages.values()) or 1.0
    by_package = [{"package": k, "own_ms_per_request": 1e3 * v / requests, "share": v / total}
                  for k, v in sorted(packages.items(), key=lambda kv: -kv[1])]
    functions.sort(key=lambda r: -r["own_ms_per_request"])
    return {"by_package": by_package, "functions": functions[:top]}


_IDLE = ("poll", "select", "acquire", "wait", "sleep", "control")


def _idle(func: str) -> bool:
    # Built-ins show as "<method 'poll' of 'select.epoll' objects>"; match the method name only.
    return func.startswith("<") and any(f"'{name}'" in func for name in _IDLE)


def _package(filename: str) -> str:
    if filename == "~":  # a C function
        return "builtins (C)"
    for marker in ("site-packages/", "dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(str(REPO)) or "/serving/" in filename:
        return "serving (this project)"
    return "python stdlib"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "dist-packages/", str(REPO) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.rsplit("/", 2)[-1] if "/" in filename else filename


# -- the load generator ------------------------------------------------------------------------------------


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the load generator's cyclic garbage collector off (a full collection first).

    Why: a full collection of the client's heap pauses it for tens of milliseconds; no request reaches the
    server meanwhile, the clients' next requests then come back as a trickle, and the micro-batcher runs
    tiny batches for hundreds of milliseconds, so the level measures the client's pause, not the server
    (traced in ``benchmarks/results/http_regimes_trace.md``). A level allocates little cyclic garbage; it is
    collected when the block ends.
    """
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# -- the server process ------------------------------------------------------------------------------------


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
        launcher: the interpreter arguments that stand for ``-m serving`` (the default); a profiled server
            passes :func:`profiled_launcher`'s ``["-c", code]``, which runs the same CLI under cProfile.
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
        shown = ["-c", "<serving under cProfile>"] if self.launcher[:1] == ["-c"] else self.launcher
        pinned = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        return [*pinned, "python", *shown, *self._serve_args()]

    def _serve_args(self) -> list[str]:
        return ["serve", "--model", str(self.model), "--gallery", str(self.gallery),
                "--host", self.host, "--port", str(self.port), "--log-level", "warning", *self.extra_args]

    def start(self) -> ServerProcess:
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

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
