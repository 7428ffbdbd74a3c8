"""Locks: a readers-writer lock for the threads of one process, and the write lock of a gallery directory.

* :class:`ReadWriteLock`: searches only read the FAISS index and the metadata, and FAISS releases the GIL
  while it searches, so letting several server threads search at once is worth having;
  ``add``/``remove``/``train`` need the gallery to themselves.
* :func:`acquire_directory`: one *process* writes a gallery directory at a time (an ``flock`` on
  ``<gallery>/.lock`` naming its holder); others are refused at once and may open it read-only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from index.errors import GalleryError, GalleryLockedError

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process exclusion (documented); in-process sharing still works
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


class ReadWriteLock:
    """Many readers or one writer, writers preferred.

    Writer preference keeps a steady stream of searches from starving an ``add``. The lock is not
    reentrant: a thread holding it must not acquire it again (the gallery never nests calls).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared (several readers at once)."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# ------------------------------------------------------------------------------------- gallery ownership
# One process writes a gallery directory at a time (ARCHITECTURE.md §7). The lock is an ``flock`` on
# ``<gallery>/.lock``: the kernel drops it when the process dies, even by ``kill -9``, so there is never a
# stale lock to clean up by hand, and a second writer learns at once (LOCK_NB) that it must not start.
# The holder writes who it is into the file, so the refusal can name it.

LOCK_FILE = ".lock"
_COMMAND_CHARS = 300
_SECRET_FLAGS = ("--api-key",)  # values never written to a file other users may read


def _command_line() -> str:
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    for i, arg in enumerate(argv[:-1]):
        if arg in _SECRET_FLAGS:
            argv[i + 1] = "***"
    argv = [a.split("=", 1)[0] + "=***" if a.startswith(tuple(f + "=" for f in _SECRET_FLAGS)) else a for a in argv]
    argv = [" ".join(a.split()) for a in argv]  # a `python -c` program spans lines: one line in the message
    text = shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else "python"
    return text if len(text) <= _COMMAND_CHARS else text[:_COMMAND_CHARS - 1] + "…"


def read_holder(directory: Path) -> dict[str, Any]:
    """What the current (or last) holder wrote into the lock file; ``{}`` when nothing readable is there.

    Adds ``alive`` (whether that pid still runs on this host), so a read-only opener can say whether a
    writer is active without touching the lock itself (taking it, even briefly, could refuse a real writer).
    """
    try:
        text = (Path(directory) / LOCK_FILE).read_text(encoding="utf-8").strip()
        holder = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(holder, dict):
        return {}
    pid = holder.get("pid")
    if isinstance(pid, int) and holder.get("host") == socket.gethostname():
        holder["alive"] = Path(f"/proc/{pid}").exists() if Path("/proc").is_dir() else None
    return holder


@dataclass
class _Held:
    fd: int
    path: Path
    refs: int
    holder: dict[str, Any]


_HELD: dict[tuple[int, int], _Held] = {}
_HELD_LOCK = threading.Lock()


class DirectoryLock:
    """This process's write ownership of one gallery directory (see :func:`acquire_directory`).

    Gallery objects of one process share the process's lock (a reference count): the kernel lock is
    per process, and a test or tool that saves a gallery and reloads it in the same process is not two
    writers. Two objects of one process that both write are kept apart by the manifest's save sequence
    instead (:class:`index.errors.StaleGalleryError`).
    """

    def __init__(self, key: tuple[int, int], directory: Path) -> None:
        self._key: tuple[int, int] | None = key
        self.directory = directory

    @property
    def held(self) -> bool:
        return self._key is not None

    @property
    def holder(self) -> dict[str, Any]:
        with _HELD_LOCK:
            held = _HELD.get(self._key) if self._key else None
            return dict(held.holder) if held else {}

    def release(self) -> None:
        """Drop this reference; the kernel lock goes when the process's last reference does (idempotent)."""
        with _HELD_LOCK:
            key, self._key = self._key, None
            held = _HELD.get(key) if key else None
            if held is None:
                return
            held.refs -= 1
            if held.refs > 0:
                return
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)  # the next reader sees no holder, not a stale one
        try:
            if fcntl is not None:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)
        log.debug("released the write lock on %s", self.directory)

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_directory(directory: Path) -> DirectoryLock:
    """Take (or share, within this process) the exclusive write lock of a gallery directory.

    Never waits: a directory another process writes is refused at once.

    Args:
        directory: the gallery directory (created when missing).

    Returns:
        A :class:`DirectoryLock`; call ``release()`` (or use it as a context manager) when done.

    Raises:
        GalleryLockedError: another process holds the lock; the message names it (pid, command, since when).
        GalleryError: the directory cannot be created or is not a directory.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GalleryError(f"cannot use {directory} as a gallery: it exists and is not a directory") from None
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None:
                held.refs += 1
                os.close(fd)
                fd = -1
                return DirectoryLock(key, directory)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise GalleryLockedError(directory, read_holder(directory)) from None
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
                      "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            _write_holder(fd, holder, directory)
            _HELD[key] = _Held(fd, directory, 1, holder)
            fd = -1
            log.info("holding the write lock on gallery %s (pid %d)", directory, os.getpid())
            return DirectoryLock(key, directory)
    finally:
        if fd >= 0:
            os.close(fd)


def _write_holder(fd: int, holder: dict[str, Any], directory: Path) -> None:
    data = (json.dumps(holder, sort_keys=True) + "\n").encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:  # a full disk must not stop a writer that already holds the lock
        log.warning("holding the write lock on %s, but could not record who holds it: %s", directory, exc)
