"""Undo records for :meth:`index.Gallery.transaction`: a change and its save succeed together or not at all.

A server answers "added" only once the items are on disk. When the save fails (a full disk), the
change must leave memory too, or searches serve items that a restart forgets and a client's retry
duplicates (issue 17). Undoing is cheaper than the alternative, changing a copy of the gallery and
swapping it in, which would double the memory of a large gallery for every request: an add is undone
by removing its ids, a removal by putting back the vectors and rows it took out (read before removing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class AddRecord:
    """An add to undo: its ids, the next id before it, and the idempotency key it recorded (if any)."""

    ids: np.ndarray
    next_id_before: int
    key: str | None = None


@dataclass
class RemoveRecord:
    """A removal to undo: the ids, their stored vectors and metadata rows."""

    ids: np.ndarray
    vectors: np.ndarray
    rows: list[Any]


def undo(records: list[AddRecord | RemoveRecord], backend: Any, store: Any, next_id: int) -> int:
    """Undo ``records`` (newest first) on a backend and metadata store; returns the next id to keep.

    The next id goes back to where it was, except on backends that keep removed vectors behind a
    tombstone (HNSW): there an undone add's ids stay used, since reissuing one would hide the new item.
    """
    for record in reversed(records):
        if isinstance(record, AddRecord):
            backend.remove_ids(record.ids)
            store.delete(record.ids)
            if record.key is not None:
                store.forget_request(record.key)
            if not backend.tombstones:
                next_id = record.next_id_before
        else:
            backend.restore(record.ids, record.vectors)
            store.insert(record.ids, record.rows)
    return next_id
