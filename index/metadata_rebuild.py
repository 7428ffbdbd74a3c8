"""Checking and rebuilding a saved metadata database whose SQLite indexes are damaged (``gallery check``/``repair``).

Every load runs SQLite's ``quick_check``; :func:`integrity_problems` is the slower ``integrity_check`` that
also cross-checks each index against its table, and :func:`rebuild_database` copies the rows of a table
whose indexes are what is broken into a fresh file (:mod:`index.repair`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from index.errors import CorruptGalleryError
from index.rows import COLUMNS, SCHEMA, check_stored_row


def integrity_problems(path: Path, limit: int = 10) -> list[str]:
    """``PRAGMA integrity_check`` of a database file (read-only): ``[]`` when it is sound.

    Slower than the ``quick_check`` every load runs: it also cross-checks each index against its table,
    which is what ``python -m serving gallery check`` is for.
    """
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = [" ".join(str(row[0]).split()) for row in conn.execute(f"PRAGMA integrity_check({int(limit)})")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return [f"not a readable SQLite database ({exc})"]
    return [] if rows == ["ok"] else rows


def rebuild_database(source: Path, dest: Path) -> int:
    """Copy the rows of a database whose indexes are damaged into a new file with fresh indexes.

    Reads the tables row by row (never through an index, which may be what is broken) and writes
    them into ``dest`` (which must not exist) under the current schema.

    Returns:
        The number of item rows copied.

    Raises:
        CorruptGalleryError: a table itself cannot be read (the rows are lost; this cannot be repaired).
    """
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    out = sqlite3.connect(dest)
    try:
        out.executescript(SCHEMA)
        try:
            # NOT INDEXED: read the table b-tree itself, not an index that may be what is damaged.
            present = tuple(row[1] for row in src.execute("PRAGMA table_info(items)"))
            wanted = [c if c in present or c != "track_id" else "NULL" for c in COLUMNS]  # a legacy table
            items = src.execute(f"SELECT {', '.join(wanted)} FROM items NOT INDEXED ORDER BY rowid").fetchall()
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            requests = (src.execute("SELECT key, digest, ids, created FROM requests NOT INDEXED").fetchall()
                        if "requests" in tables else [])
        except sqlite3.DatabaseError as exc:
            raise CorruptGalleryError(source, f"its tables cannot be read ({exc}): the metadata cannot be "
                                              f"rebuilt; re-index the images into a new gallery") from None
        for row in items:
            check_stored_row(source, row)
        with out:
            out.executemany(f"INSERT INTO items ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                            items)
            out.executemany("INSERT OR IGNORE INTO requests (key, digest, ids, created) VALUES (?, ?, ?, ?)",
                            requests)
    finally:
        src.close()
        out.close()
    return len(items)
