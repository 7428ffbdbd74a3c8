"""Transactions of :class:`index.Gallery`: a change and its save succeed together or not at all; idempotent adds.

A server answers "added" only once the items are on disk. When the save fails (a full disk), the
change must leave memory too, or searches serve items that a restart forgets and a client's retry
duplicates. Undoing is cheaper than the alternative, changing a copy of the gallery and swapping it in,
which would double the memory of a large gallery for every request: an add is undone by removing its
ids, a removal by putting back the vectors and rows it took out (read before removing).

A retried request must not add twice either: an add may carry an idempotency key, recorded with its ids
in the same save (:class:`index.metadata.MetadataStore`'s ``requests`` table); the same key again gives
back those ids, and the same key with another request is refused.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from index.errors import GalleryError, UndoFailedError
from index.locking import ReadWriteLock

log = logging.getLogger(__name__)


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


class Transactions:
    """``transaction()`` and the idempotency-key replay of :class:`index.Gallery` (a mixin: the gallery's state)."""

    _writer: threading.RLock
    _lock: ReadWriteLock
    _journal: list[AddRecord | RemoveRecord] | None
    _next_id: int
    _unsaved: int
    _storage: Any  # index.storage.Storage (which imports this module)

    @contextlib.contextmanager
    def transaction(self, guard: Callable[[], ContextManager[Any]] | None = None) -> Iterator[Any]:
        """Changes made in the block are undone if the block raises (typically: its ``save`` failed).

        Other threads' changes and saves wait until the block ends, so nothing but a committed state is
        ever written. Blocks do not nest.

        Args:
            guard: a lock to hold while undoing (the server's own readers-writer lock, so that none of its
                searches sees half an undo).

        Raises:
            Whatever the block raised, after the undo. If the undo itself fails (it only touches memory,
            so it should not), :class:`~index.errors.UndoFailedError` says that memory no longer matches
            the last save.
        """
        with self._writer:
            if self._journal is not None:
                raise GalleryError("gallery transactions do not nest")
            self._journal = []
            try:
                yield self
            except BaseException:
                journal, self._journal = self._journal, None
                if journal:
                    self._undo(journal, guard)
                raise
            finally:
                self._journal = None

    def _undo(self, journal: list[AddRecord | RemoveRecord], guard: Callable[[], ContextManager[Any]] | None) -> None:
        try:
            with guard() if guard is not None else contextlib.nullcontext(), self._lock.write():
                self._next_id = self._storage.undo(journal, self._next_id)
                self._unsaved = max(0, self._unsaved - len(journal))
        except Exception as exc:
            raise UndoFailedError(f"a change to the gallery failed to save and could not be undone in memory ({exc}); "
                                  f"memory no longer matches the last save: restart from the saved gallery") from exc
        log.info("undid %d gallery change(s) that were not saved", len(journal))

    def _replay(self, key: str, digest: str) -> np.ndarray | None:
        """The ids of the saved add that recorded ``key`` (None: a new key); another request's key is refused."""
        found = self._storage.find_request(key)
        if found is None:
            return None
        saved_digest, ids = found
        if saved_digest != digest:
            raise GalleryError(f"idempotency key {key!r} was already used for a different request; use a new key "
                               f"for a new request")
        return np.asarray(ids, dtype=np.int64)

    def find_request(self, key: str) -> tuple[str, list[int]] | None:
        """``(request_digest, ids)`` of the saved add that recorded ``key``, or None (always, for Milvus)."""
        with self._lock.read():
            return self._storage.find_request(key)
