"""The audit trail on disk: append-only JSON lines, hash-chained so that any edit, removal or reordering shows.

Every record carries ``seq`` (1, 2, 3, … over the life of the log), ``prev`` (the previous record's ``hash``;
64 zeros for the first) and ``hash``, the SHA-256 of the record's canonical JSON without ``hash`` (keys sorted,
no spaces). :func:`verify` recomputes each hash and follows the chain, so it names the first record that was
edited (its hash no longer matches), removed (a ``seq`` is missing) or moved (a record does not follow the one
before it). A small ``PATH.head`` file, rewritten after each durable append, remembers the last ``seq`` so
that cutting records off the end shows too. The chain proves order and integrity to whoever trusts the first
record; an attacker who can rewrite the whole file can rebuild the chain, so ship the log off the host (or
keep the head's hash elsewhere) where that matters. The idea is that of a hash chain as in certificate
transparency logs, reduced to a single writer.

Files: the live log is ``PATH``; at ``max_bytes`` it is renamed ``PATH.000001``, ``PATH.000002``, … (oldest
first) and a new ``PATH`` continues the chain. Nothing is deleted: retention of the audit trail is the
operator's (archive the numbered files together, ``verify`` reads them in order).

Records are written durably (write, flush, ``fsync``) before :meth:`AuditLog.append` returns; the server
awaits :meth:`AuditWriter.write`, which groups the records of concurrent requests into one ``fsync``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GENESIS = "0" * 64
DEFAULT_MAX_BYTES = 64 << 20
_ROTATED = re.compile(r"\.(\d{6})$")


class AuditError(Exception):
    """The audit log cannot be opened or written (a full disk, no permission, a damaged tail)."""


def canonical(record: dict[str, Any]) -> bytes:
    """The bytes a record's hash is computed over: its JSON without ``hash``, keys sorted, no spaces."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 (hex) of :func:`canonical`."""
    return hashlib.sha256(canonical(record)).hexdigest()


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with milliseconds (``2026-12-07T10:00:00.123Z``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def log_files(path: str | Path) -> list[Path]:
    """The files of the log at ``path``, oldest first: the numbered rotations, then the live file."""
    path = Path(path)
    rotated = sorted(p for p in path.parent.glob(path.name + ".*") if _ROTATED.search(p.name)
                     and p.name[: -7] == path.name)
    return [*rotated, *([path] if path.exists() else [])]


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _last_record(files: list[Path]) -> dict[str, Any] | None:
    for file in reversed(files):
        with open(file, "rb") as handle:
            lines = handle.read().splitlines()
        for line in reversed(lines):
            if line.strip():
                return json.loads(line)
    return None


class AuditLog:
    """The writer: one per log, thread-safe; every :meth:`append` is on disk when it returns.

    Args:
        path: the live log file (its folder is created).
        max_bytes: rotate when the live file reaches this size.
        fsync: flush each append to the device (turn off only in tests of other things).
    """

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES, fsync: bool = True) -> None:
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self._fsync = fsync
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer_lock = _take_writer_lock(self.path)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            self._drop_torn_tail()
            last = _last_record(log_files(self.path))
        except (OSError, ValueError) as exc:
            self._writer_lock.close()
            raise AuditError(f"cannot open the audit log {self.path}: {exc}") from exc
        self._seq = int(last["seq"]) if last else 0
        self._prev = str(last["hash"]) if last else GENESIS
        try:
            self._handle = open(self.path, "ab")  # noqa: SIM115 - held open for the life of the log
        except OSError as exc:
            self._writer_lock.close()
            raise AuditError(f"cannot open the audit log {self.path} for appending: {exc}") from exc

    def _drop_torn_tail(self) -> None:
        # A crash in the middle of a write can leave a last line without its newline. Its request was never
        # answered (answers wait for the fsync), so the fragment is no record: cut it off, and say so.
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as handle:
            data = handle.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            handle.truncate(keep)
            os.fsync(handle.fileno())
        log.warning("audit log %s ended with an unfinished record (%d bytes, a crash while writing); removed it",
                    self.path, len(data) - keep)

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last record written."""
        return self._seq

    def append(self, *records: dict[str, Any]) -> list[dict[str, Any]]:
        """Chain, write and fsync ``records`` (one ``fsync`` for all); returns them with ``seq``/``prev``/``hash``.

        Raises:
            AuditError: the write or the fsync failed; nothing of this call is counted as written.
        """
        with self._lock:
            seq, prev, out, lines = self._seq, self._prev, [], []
            for fields in records:
                seq += 1
                record = {"time": utc_now(), **fields, "seq": seq, "prev": prev}
                record["hash"] = prev = record_hash(record)
                out.append(record)
                lines.append(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
            data = ("\n".join(lines) + "\n").encode("utf-8")
            start = self._handle.tell()
            try:
                self._handle.write(data)
                self._handle.flush()
                if self._fsync:
                    os.fsync(self._handle.fileno())
            except OSError as exc:
                self._undo(start)
                raise AuditError(f"cannot write the audit log {self.path}: {exc}") from exc
            self._seq, self._prev = seq, prev
            self._write_head()
            if self._handle.tell() >= self.max_bytes:
                self._rotate()
            return out

    def _undo(self, start: int) -> None:
        try:
            self._handle.truncate(start)
            self._handle.seek(start)
        except OSError:  # the log stays as it is; the next open drops a torn tail
            log.exception("could not undo a failed audit write in %s", self.path)

    def _write_head(self) -> None:
        # Written after the record is durable and without its own fsync: after a crash the head may lag the
        # log (never lead it), so it never raises a false alarm.
        try:
            _head_path(self.path).write_text(json.dumps({"seq": self._seq, "hash": self._prev}) + "\n")
        except OSError as exc:
            log.warning("could not update %s: %s", _head_path(self.path), exc)

    def _rotate(self) -> None:
        self._handle.close()
        rotated = log_files(self.path)[:-1]
        number = int(_ROTATED.search(rotated[-1].name).group(1)) + 1 if rotated else 1
        target = self.path.with_name(f"{self.path.name}.{number:06d}")
        os.replace(self.path, target)
        self._handle = open(self.path, "ab")  # noqa: SIM115 - the new live file, held open
        log.info("audit log rotated to %s", target)

    def close(self) -> None:
        """Close the file and let another writer open the log."""
        with self._lock:
            self._handle.close()
            self._writer_lock.close()


def _take_writer_lock(path: Path) -> Any:
    """Hold ``PATH.lock`` exclusively (released when closed, or when the process dies): two writers would fork the
    hash chain, each continuing from the same last record. The lock file, unlike the log, is never rotated."""
    handle = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 - held for the life of the log
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AuditError(f"the audit log {path} is being written by another process (a running server, or "
                         f"another command); one writer at a time keeps its hash chain whole") from None
    return handle


class AuditWriter:
    """Group commit for the server: ``await write(fields)`` returns once the record is on disk.

    One thread owns the :class:`AuditLog`; the records of requests that arrive while it writes wait for the
    next write and share its ``fsync``, so a busy server pays one ``fsync`` per batch, not per request.
    """

    def __init__(self, audit_log: AuditLog) -> None:
        self.log = audit_log
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], asyncio.Future[dict[str, Any]]] | None] = (
            queue.SimpleQueue())
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    async def write(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Append one record; raises :class:`AuditError` when it could not be written."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.put((fields, future))
        return await future

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while True:  # everything queued meanwhile shares this write
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                written: list[Any] = self.log.append(*(fields for fields, _ in batch))
                error = None
            except AuditError as exc:
                written, error = [None] * len(batch), exc
            for (_, future), record in zip(batch, written):
                future.get_loop().call_soon_threadsafe(_settle, future, record, error)

    def close(self) -> None:
        """Finish the queued records and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.log.close()


def _settle(future: asyncio.Future[Any], record: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(record)


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`verify`: ``problem`` is None for an intact log."""

    records: int
    problem: str | None = None

    @property
    def ok(self) -> bool:
        """True when every record is intact and in order."""
        return self.problem is None


def iter_records(path: str | Path) -> Iterator[tuple[Path, int, bytes]]:
    """``(file, line number, raw line)`` for every non-empty line of the log, oldest first."""
    for file in log_files(path):
        with open(file, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    yield file, number, line.rstrip(b"\n")


def verify(path: str | Path) -> Verdict:
    """Check the whole log at ``path``: every hash, the chain, the ``seq`` order and the head.

    Returns:
        A :class:`Verdict` whose ``problem`` names the first bad record (file, line, ``seq``) in one sentence.
    """
    path = Path(path)
    if not log_files(path):
        return Verdict(0, f"no audit log at {path}")
    expected_seq, prev, count = 1, GENESIS, 0
    for file, number, line in iter_records(path):
        where = f"{file.name} line {number}"
        try:
            record = json.loads(line)
            seq, stored_prev, stored_hash = int(record["seq"]), record["prev"], record["hash"]
        except (ValueError, KeyError, TypeError):
            return Verdict(count, f"{where} is not an audit record: it was altered")
        if record_hash(record) != stored_hash:
            return Verdict(count, f"record {seq} ({where}) was altered: its hash does not match its content")
        if seq != expected_seq:
            what = (f"record {expected_seq} is missing" if seq > expected_seq else f"record {seq} is out of order")
            return Verdict(count, f"{what}: expected record {expected_seq} at {where}, found record {seq} "
                                  f"(removed or reordered)")
        if stored_prev != prev:
            return Verdict(count, f"record {seq} ({where}) does not follow record {seq - 1}: the chain is broken "
                                  f"(a record before it was altered, removed or reordered)")
        expected_seq, prev, count = seq + 1, stored_hash, count + 1
    head = _head_path(path)
    if head.exists():
        try:
            head_seq = int(json.loads(head.read_text())["seq"])
        except (ValueError, KeyError, TypeError, OSError):
            head_seq = None
            log.warning("%s is unreadable; the end of the log is not checked", head)
        if head_seq is not None and head_seq > count:
            missing = f"record {head_seq}" if head_seq == count + 1 else f"records {count + 1}..{head_seq}"
            return Verdict(count, f"the log ends at record {count} but {head_seq} were written: {missing} "
                                  f"removed from its end")
    return Verdict(count)
