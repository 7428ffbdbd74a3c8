"""Per-item metadata in SQLite, beside the vector index.

The live gallery keeps its metadata in an in-memory SQLite database and copies it to a file only
on save (``sqlite3.Connection.backup``), so the files on disk change only through the atomic save
in :mod:`index.persist` and never disagree with the index file saved next to them.

Columns: ``id`` (the gallery id), ``camera`` (int), ``person_label`` (int, str or NULL),
``source`` (path or URI), ``timestamp`` (Unix seconds, REAL), ``extra`` (JSON object as text).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import numbers
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import GalleryError

FIELDS = ("camera", "person_label", "source", "timestamp", "extra")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    camera INTEGER NOT NULL,
    person_label,
    source TEXT,
    timestamp REAL,
    extra TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS items_camera ON items(camera);
CREATE INDEX IF NOT EXISTS items_timestamp ON items(timestamp);
CREATE INDEX IF NOT EXISTS items_source ON items(source);
"""
# ``person_label`` has no declared type on purpose: SQLite then keeps ints as ints and strings as
# strings, so a label round-trips with the type the caller gave it.

Row = tuple[int, Any, str | None, float | None, str]


def to_timestamp(value: Any, what: str) -> float | None:
    """Convert a timestamp to Unix seconds.

    Args:
        value: ``None``, a number (Unix seconds), a ``datetime`` (naive means UTC) or an
            ISO-8601 string.
        what: how to name the value in an error message.

    Returns:
        Seconds since the epoch, or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise GalleryError(f"{what}: expected Unix seconds, a datetime or an ISO-8601 string, got a bool")
    if isinstance(value, numbers.Real):
        seconds = float(value)
        if not math.isfinite(seconds):
            raise GalleryError(f"{what}: timestamp must be finite, got {value!r}")
        return seconds
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise GalleryError(f"{what}: {value!r} is not an ISO-8601 date/time") from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.timestamp()
    raise GalleryError(f"{what}: expected Unix seconds, a datetime or an ISO-8601 string, got {type(value).__name__}")


def _check_row(i: int, item: Any) -> Row:
    if not isinstance(item, dict):
        raise GalleryError(f"metadata[{i}] must be a dict with keys {', '.join(FIELDS)}, got {type(item).__name__}")
    unknown = set(item) - set(FIELDS)
    if unknown:
        hint = " (ids are assigned by the gallery)" if "id" in unknown else ""
        raise GalleryError(f"metadata[{i}] has unknown key(s) {sorted(map(str, unknown))}{hint}; "
                           f"valid keys: {', '.join(FIELDS)}")
    if "camera" not in item:
        raise GalleryError(f"metadata[{i}] is missing the required key 'camera' (an int)")
    camera = item["camera"]
    if isinstance(camera, bool) or not isinstance(camera, numbers.Integral):
        raise GalleryError(f"metadata[{i}]['camera'] must be an int, got {camera!r}")
    label = item.get("person_label")
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        label = int(label)
    elif label is not None and not isinstance(label, str):
        raise GalleryError(f"metadata[{i}]['person_label'] must be an int, a str or None, got {label!r}")
    source = item.get("source")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if source is not None and not isinstance(source, str):
        raise GalleryError(f"metadata[{i}]['source'] must be a str (path or URI) or None, got {source!r}")
    timestamp = to_timestamp(item.get("timestamp"), f"metadata[{i}]['timestamp']")
    extra = item.get("extra")
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise GalleryError(f"metadata[{i}]['extra'] must be a JSON-able dict or None, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise GalleryError(f"metadata[{i}]['extra'] is not JSON-able: {exc}") from None
    return int(camera), label, source, timestamp, extra_json


def validate_metadata(metadata: Any, n: int) -> list[Row]:
    """Check the metadata given to ``Gallery.add`` before anything is changed.

    Args:
        metadata: a sequence of ``n`` dicts with ``camera`` (int, required) and optional
            ``person_label`` (int or str), ``source`` (str), ``timestamp`` (see
            :func:`to_timestamp`), ``extra`` (JSON-able dict).
        n: the number of vectors being added.

    Returns:
        One normalised row per item, ready for :meth:`MetadataStore.insert`.
    """
    if isinstance(metadata, dict) or not isinstance(metadata, Sequence) or isinstance(metadata, str):
        raise GalleryError(f"metadata must be a list of {n} dicts, got {type(metadata).__name__}")
    if len(metadata) != n:
        raise GalleryError(f"metadata has {len(metadata)} entries but {n} vectors were given; they must match")
    return [_check_row(i, item) for i, item in enumerate(metadata)]


class MetadataStore:
    """The gallery's metadata table, in memory, with file load/save.

    Every method takes an internal lock, because one SQLite connection is shared by the server
    threads (the gallery's own readers-writer lock lets several searches run at once).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._columns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._generation = 0  # bumped by every mutation, so a stale column cache is never stored
        with self._lock:
            self._conn.executescript(_SCHEMA)

    @classmethod
    def in_memory(cls) -> MetadataStore:
        """An empty store."""
        return cls(sqlite3.connect(":memory:", check_same_thread=False))

    @classmethod
    def load(cls, path: Path) -> MetadataStore:
        """Copy a saved database into memory (the file is left untouched)."""
        if not path.is_file():
            raise GalleryError(f"metadata database {path} is missing")
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            src.backup(conn)
        except sqlite3.DatabaseError as exc:
            raise GalleryError(f"metadata database {path} is unreadable: {exc}") from None
        finally:
            src.close()
        return cls(conn)

    def save(self, path: Path) -> None:
        """Write the whole table to a new database file at ``path`` (which must not exist)."""
        dest = sqlite3.connect(path)
        try:
            with self._lock:
                self._conn.backup(dest)
        finally:
            dest.close()

    def insert(self, ids: np.ndarray, rows: Sequence[Row]) -> None:
        """Insert validated rows (one transaction: all or nothing)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO items (id, camera, person_label, source, timestamp, extra) VALUES (?, ?, ?, ?, ?, ?)",
                [(int(i), *row) for i, row in zip(ids, rows)])
            self._columns = None
            self._generation += 1

    def delete(self, ids: np.ndarray) -> None:
        """Delete rows by id (one transaction)."""
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in ids])
            self._columns = None
            self._generation += 1

    def get(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Rows by id, as dicts with ``id`` and every field; ids not present are left out."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite caps the number of bound parameters
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                        f"SELECT id, camera, person_label, source, timestamp, extra FROM items WHERE id IN ({marks})",
                        chunk):
                    out[row[0]] = {"id": row[0], "camera": row[1], "person_label": row[2], "source": row[3],
                                   "timestamp": row[4], "extra": json.loads(row[5])}
        return out

    def find_sources(self, sources: Iterable[str]) -> dict[str, int]:
        """``{source: id}`` for the given sources that are stored (the first id if one repeats)."""
        wanted = sorted({str(s) for s in sources})
        out: dict[str, int] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for source, item_id in self._conn.execute(
                        f"SELECT source, MIN(id) FROM items WHERE source IN ({marks}) GROUP BY source", chunk):
                    out[source] = int(item_id)
        return out

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def ids(self) -> np.ndarray:
        """All ids, sorted, int64."""
        return self._column_cache()[0]

    def camera_counts(self) -> dict[int, int]:
        with self._lock:
            rows = self._conn.execute("SELECT camera, COUNT(*) FROM items GROUP BY camera ORDER BY camera")
            return {int(c): int(n) for c, n in rows}

    def labelled_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM items WHERE person_label IS NOT NULL").fetchone()[0])

    def select_ids(self, cameras: np.ndarray | None,
                   time_range: tuple[float | None, float | None] | None) -> np.ndarray:
        """Ids whose camera is in ``cameras`` and whose timestamp lies in ``time_range`` (inclusive).

        Items without a timestamp never match a time range. Returns sorted int64 ids.
        """
        ids, cams, stamps = self._column_cache()
        keep = np.ones(len(ids), dtype=bool)
        if cameras is not None:
            keep &= np.isin(cams, cameras)
        if time_range is not None:
            lo, hi = time_range
            # NaN (no timestamp) compares False, so unstamped items drop out of any time range.
            keep &= ~np.isnan(stamps)
            if lo is not None:
                keep &= stamps >= lo
            if hi is not None:
                keep &= stamps <= hi
        return ids[keep]

    def _column_cache(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Filtering in SQL costs ~10 ms per query on 1e5 rows (row tuples to Python); numpy columns
        # cost well under 1 ms. They are rebuilt lazily after each mutation, never kept in sync by
        # hand, so SQLite stays the one source of truth.
        cached = self._columns
        if cached is not None:
            return cached
        with self._lock:
            generation = self._generation
            rows = self._conn.execute("SELECT id, camera, timestamp FROM items ORDER BY id").fetchall()
        if rows:
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            cams = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
            stamps = np.fromiter((np.nan if r[2] is None else r[2] for r in rows), dtype=np.float64, count=len(rows))
        else:
            ids, cams, stamps = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        cached = (ids, cams, stamps)
        with self._lock:
            if self._generation == generation:
                self._columns = cached
        return cached
