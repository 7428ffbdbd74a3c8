"""Per-item metadata in SQLite, beside the vector index: the store a FAISS gallery reads and writes.

The live gallery keeps its metadata in an in-memory SQLite database and copies it to a file only
on save (``sqlite3.Connection.backup``), so the files on disk change only through the atomic save
in :mod:`index.persist` and never disagree with the index file saved next to them. The rows, their
schema and their checks are :mod:`index.rows`'s.

A database saved before ``track_id`` existed is upgraded in memory at load (``ALTER TABLE ... ADD
COLUMN``, every old item gets ``NULL``); the file itself is rewritten under the new schema by the next
save, through the same atomic save as any change. Nothing else about an old gallery changes.

A second table, ``requests``, remembers the idempotency keys of recent adds (key -> request digest and
the ids it created). It lives in the same file as the items on purpose: a key and the items it made are
committed by the same atomic save, so a retried request after a crash or a timeout can never find the
items without the key (a duplicate) or the key without the items (a lost add).

Loading reads every row once and refuses the file (one line naming it and the row) when SQLite's
``quick_check`` fails or a value has the wrong type (:func:`index.rows.check_stored_row`).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import CorruptGalleryError, GalleryError
from index.rows import COLUMNS, LEGACY_COLUMNS, SCHEMA, Row, check_stored_row

log = logging.getLogger(__name__)

# Idempotency keys are kept this long (a client retries within minutes; a day is generous) and at most
# this many, so the table stays small however many adds a gallery sees.
REQUEST_TTL_S = 24 * 3600.0
MAX_REQUESTS = 100_000
#: What ``Gallery.search_groups`` can group by (besides ``none``): the column(s) that make a group's key.
GROUP_BY = ("person", "camera_track")


def _extra(text: str) -> dict[str, Any]:
    """A row's ``extra`` column as a dict. Nearly every item has none (``'{}'``), and a search reads the
    metadata of every hit, so the JSON parser is skipped for the empty one (measured: 1.5 us per hit)."""
    return {} if text == "{}" else json.loads(text)


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
        self._group_cache: dict[Any, Any] = {}
        with self._lock:
            self._conn.executescript(SCHEMA)

    @classmethod
    def in_memory(cls) -> MetadataStore:
        """An empty store."""
        return cls(sqlite3.connect(":memory:", check_same_thread=False))

    @classmethod
    def load(cls, path: Path) -> MetadataStore:
        """Copy a saved database into memory (the file is left untouched), checking every row once.

        Raises:
            CorruptGalleryError: the file is not a readable SQLite database, ``PRAGMA quick_check`` reports
                damage, the ``items`` table is missing or has other columns, or a row holds a value of the
                wrong type (the message names the file and the row id).
        """
        if not path.is_file():
            raise GalleryError(f"metadata database {path} is missing")
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                problems = [" ".join(str(row[0]).split()) for row in src.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise CorruptGalleryError(path, f"SQLite quick_check reports damage: {'; '.join(problems)}")
                src.backup(conn)
            finally:
                src.close()
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(items)"))
            if columns == LEGACY_COLUMNS:  # saved before track_id existed: upgrade the in-memory copy
                conn.execute("ALTER TABLE items ADD COLUMN track_id")
                conn.commit()
                columns = COLUMNS
                log.info("metadata %s predates track_id; every item loads with track_id NULL, and the next save "
                         "writes the new schema", path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            reason = " ".join(str(exc).split())
            raise CorruptGalleryError(path, f"is not a readable SQLite database ({reason})") from None
        except BaseException:
            conn.close()
            raise
        if columns != COLUMNS:
            conn.close()
            raise CorruptGalleryError(path, f"has no items table with columns {', '.join(COLUMNS)} "
                                            f"(found {', '.join(columns) or 'none'})")
        store = cls(conn)
        store._columns = store._checked_columns(path)
        return store

    def _checked_columns(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read every row once: check each value's type, and build the search-filter columns from the same pass."""
        ids, cams, stamps = [], [], []
        try:
            with self._lock:
                for row in self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM items ORDER BY id"):
                    check_stored_row(path, row)
                    ids.append(row[0])
                    cams.append(row[1])
                    stamps.append(np.nan if row[4] is None else row[4])
        except sqlite3.DatabaseError as exc:
            raise CorruptGalleryError(path, f"cannot be read row by row ({exc})") from None
        return (np.asarray(ids, dtype=np.int64), np.asarray(cams, dtype=np.int64),
                np.asarray(stamps, dtype=np.float64))

    def save(self, path: Path) -> None:
        """Write the whole table to a new database file at ``path`` (which must not exist)."""
        dest = sqlite3.connect(path)
        try:
            with self._lock:
                self._conn.backup(dest)
        finally:
            dest.close()

    def reindex(self) -> None:
        """Rebuild every SQLite index from its table (what ``gallery repair`` writes after damaged indexes)."""
        with self._lock, self._conn:
            self._conn.execute("REINDEX")

    def insert(self, ids: np.ndarray, rows: Sequence[Row]) -> None:
        """Insert validated rows (one transaction: all or nothing)."""
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT INTO items (id, camera, person_label, source, timestamp, extra, track_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(int(i), *row) for i, row in zip(ids, rows)])
            self._columns = None
            self._generation += 1

    def delete(self, ids: np.ndarray) -> None:
        """Delete rows by id (one transaction)."""
        with self._lock, self._conn:
            self._conn.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in ids])
            self._columns = None
            self._generation += 1

    def rows(self, ids: np.ndarray) -> list[Row]:
        """The stored rows of ``ids`` (all present), in the order given: what :meth:`insert` takes back."""
        found: dict[int, Row] = {}
        wanted = [int(i) for i in ids]
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                for row in self._conn.execute(
                        f"SELECT {', '.join(COLUMNS)} FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    found[row[0]] = tuple(row[1:])  # type: ignore[assignment]
        return [found[i] for i in wanted]

    # -- idempotency keys ---------------------------------------------------------------------------
    def find_request(self, key: str) -> tuple[str, list[int]] | None:
        """``(digest, ids)`` recorded for an idempotency key, or None."""
        with self._lock:
            row = self._conn.execute("SELECT digest, ids FROM requests WHERE key = ?", (key,)).fetchone()
        return None if row is None else (str(row[0]), [int(i) for i in json.loads(row[1])])

    def record_request(self, key: str, digest: str, ids: Sequence[int], now: float | None = None) -> None:
        """Remember a key and the ids its add created; forget keys older than :data:`REQUEST_TTL_S`."""
        now = time.time() if now is None else now
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM requests WHERE created < ?", (now - REQUEST_TTL_S,))
            self._conn.execute("INSERT INTO requests (key, digest, ids, created) VALUES (?, ?, ?, ?)",
                               (key, digest, json.dumps([int(i) for i in ids]), now))
            self._conn.execute("DELETE FROM requests WHERE key IN (SELECT key FROM requests ORDER BY created DESC "
                               "LIMIT -1 OFFSET ?)", (MAX_REQUESTS,))

    def forget_request(self, key: str) -> None:
        """Drop a key (undoing an add that did not become durable)."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM requests WHERE key = ?", (key,))

    def get(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Rows by id, as dicts with ``id`` and every field; ids not present are left out."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite caps the number of bound parameters
                chunk = wanted[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._conn.execute(
                        f"SELECT {', '.join(COLUMNS)} FROM items WHERE id IN ({marks})", chunk):
                    out[row[0]] = {"id": row[0], "camera": row[1], "person_label": row[2], "source": row[3],
                                   "timestamp": row[4], "extra": _extra(row[5]), "track_id": row[6]}
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

    def present(self, ids: np.ndarray) -> np.ndarray:
        """Bool mask: which of ``ids`` are stored."""
        return np.isin(ids, self.ids())

    def camera_counts(self) -> dict[int, int]:
        with self._lock:
            rows = self._conn.execute("SELECT camera, COUNT(*) FROM items GROUP BY camera ORDER BY camera")
            return {int(c): int(n) for c, n in rows}

    def labelled_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM items WHERE person_label IS NOT NULL").fetchone()[0])

    def group_totals(self, group_by: str, cameras: np.ndarray | None) -> tuple[int, int]:
        """``(groups, items)`` under a camera filter: how many groups a grouped search can fill, and from how
        many items. An item without the group's key (no label, no track id) counts as a group of its own.

        Cached per mutation generation (a ``GROUP BY`` over a large table costs tens of milliseconds; a search
        asks this every time to size its first, wide enough, search).
        """
        key = (group_by, None if cameras is None else tuple(int(c) for c in cameras))
        with self._lock:
            cache = self._group_cache
            if cache.get("generation") != self._generation:
                cache.clear()
                cache["generation"] = self._generation
            if key in cache:
                return cache[key]
            where, params = _camera_clause(cameras)
            column = _GROUP_COLUMNS[group_by]
            total = self._conn.execute(f"SELECT COUNT(*) FROM items {where}", params).fetchone()[0]
            keyed = " AND ".join(filter(None, [where.removeprefix("WHERE "), f"{column[-1]} IS NOT NULL"]))
            grouped, members = self._conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM items WHERE {keyed} "
                f"GROUP BY {', '.join(column)})", params).fetchone()
            cache[key] = (int(grouped) + int(total) - int(members), int(total))
            return cache[key]

    def group_counts(self, group_by: str, keys: Sequence[Any], cameras: np.ndarray | None) -> dict[Any, int]:
        """Items per group key (``person_label``, or ``(camera, track_id)``) under a camera filter."""
        column = _GROUP_COLUMNS[group_by]
        where, params = _camera_clause(cameras)
        prefix = f"{where} AND" if where else "WHERE"
        out: dict[Any, int] = {}
        wanted = list(dict.fromkeys(keys))
        width = len(column)
        with self._lock:
            for start in range(0, len(wanted), 200):
                chunk = wanted[start:start + 200]
                if width == 1:
                    test, values = f"{column[0]} IN ({','.join('?' * len(chunk))})", list(chunk)
                else:
                    test = f"({', '.join(column)}) IN (VALUES {','.join(['(?, ?)'] * len(chunk))})"
                    values = [v for pair in chunk for v in pair]
                for *found, n in self._conn.execute(
                        f"SELECT {', '.join(column)}, COUNT(*) FROM items {prefix} {test} GROUP BY {', '.join(column)}",
                        [*params, *values]):
                    out[found[0] if width == 1 else tuple(found)] = int(n)
        return out

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

    def stamped_before(self, cutoff: float) -> np.ndarray:
        """Ids whose timestamp is strictly before ``cutoff`` (Unix seconds), sorted int64 (what retention expires).

        An item stamped exactly at ``cutoff`` is not before it; items without a timestamp never match.
        """
        ids, _, stamps = self._column_cache()
        with np.errstate(invalid="ignore"):
            return ids[stamps < float(cutoff)]  # NaN (no timestamp) compares False

    def unstamped_count(self) -> int:
        """How many items have no timestamp."""
        return int(np.isnan(self._column_cache()[2]).sum())

    def track_spans(self, cameras: np.ndarray | None = None) -> list[dict[str, Any]]:
        """One row per ``(camera, track_id)``: first and last timestamp, item count and the first item's id,
        earliest first (tracks without a time last). Items without a track id are not tracks."""
        where, params = _camera_clause(cameras)
        where = f"{where} AND track_id IS NOT NULL" if where else "WHERE track_id IS NOT NULL"
        rows = self._conn.execute(
            f"SELECT camera, track_id, MIN(timestamp), MAX(timestamp), COUNT(*), MIN(id) FROM items {where} "
            "GROUP BY camera, track_id ORDER BY MIN(timestamp) IS NULL, MIN(timestamp), camera, MIN(id)", params)
        return [{"camera": int(camera), "track_id": track, "first_seen": first, "last_seen": last, "items": int(n),
                 "first_id": int(first_id)} for camera, track, first, last, n, first_id in rows]

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


_GROUP_COLUMNS = {"person": ("person_label",), "camera_track": ("camera", "track_id")}


def _camera_clause(cameras: np.ndarray | None) -> tuple[str, list[int]]:
    if cameras is None:
        return "", []
    values = [int(c) for c in cameras]
    if not values:
        return "WHERE 0", []
    return f"WHERE camera IN ({','.join('?' * len(values))})", values


