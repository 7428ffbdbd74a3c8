"""Saving a gallery: its manifest's fields, and the save to its own directory or a copy elsewhere (a mixin).

The fields below are every fact the gallery itself records in ``manifest.json``; its storage adds where its
data is (:meth:`index.storage.Storage.write`: a FAISS gallery's versioned data directory with sizes and
checksums, a Milvus gallery's collection address) and :mod:`index.persist` the save's sequence and time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from index.errors import ReadOnlyGalleryError
from index.locking import DirectoryLock, ReadWriteLock
from index.manifest import FORMAT, FORMAT_VERSION
from index.ownership import same_dir

log = logging.getLogger(__name__)


class Saving:
    """``save`` of :class:`index.Gallery` (the gallery's state; see the module docstring)."""

    _directory: Path | None
    _read_only: bool
    _sequence: int | None
    _saved: str | None
    _unsaved: int
    _uid: str
    _origin: dict[str, Any] | None
    _fingerprint: str | None
    _family: str | None
    _created: str
    _next_id: int
    _notes: dict[str, str]
    _owner: DirectoryLock | None
    _writer: threading.RLock
    _lock: ReadWriteLock
    _storage: Any  # index.storage.Storage
    _backend: Any  # index.backends.VectorBackend
    dim: int
    kind: str

    claim: Callable[..., Any]  # index.ownership.DirectoryOwnership.claim

    def save(self, directory: str | Path, *, replace: bool = False) -> Path:
        """Atomically write the gallery to ``directory`` (see :mod:`index.persist`).

        Searches keep running during a save; adds and removes wait for it. Saving to the gallery's own
        directory (or, for a gallery that has none, adopting ``directory``) takes and keeps the
        directory's write lock; saving anywhere else writes a copy (which records this gallery as its
        origin) and leaves this gallery where it was. A Milvus gallery's save flushes the collection and
        writes only the manifest that points at it (a copy points at the same collection).

        Args:
            directory: where to save.
            replace: overwrite a gallery this object did not read (``gallery repair``); never needed otherwise.

        Returns:
            The directory.

        Raises:
            GalleryLockedError: another process writes ``directory``.
            StaleGalleryError: ``directory`` holds a save this gallery has not seen (another writer's), or a
                copy's target already holds a gallery. Nothing is written.
            ReadOnlyGalleryError: the gallery was opened read-only and ``directory`` is its own.
            OSError: a write failed (ENOSPC...): nothing changed on disk (see :func:`persist.save_directory`).
        """
        directory = Path(directory)
        own = self._directory is None or same_dir(directory, self._directory)
        if own and self._read_only:
            raise ReadOnlyGalleryError(f"gallery {directory} was opened read-only; save a copy elsewhere instead")
        started = time.perf_counter()
        with self._writer:
            if own:
                self._directory = directory
                if not replace:
                    self.claim()
            with self._lock.read():
                manifest = self._manifest_fields(own)
                written = self._storage.write(directory, manifest, lock=self._owner if own and not replace else None,
                                              expect_sequence=self._sequence if own else None, replace=replace)
            if own:
                self._sequence, self._saved, self._unsaved = int(written["sequence"]), written["saved"], 0
        log.info("saved %d items to %s (save %d) in %.2f s", manifest["count"], directory, written["sequence"],
                 time.perf_counter() - started)
        return directory

    def _manifest_fields(self, own: bool = True) -> dict[str, Any]:
        """The gallery's own manifest fields (called under the read lock); a copy's ``origin`` names this gallery.

        Args:
            own: for a save to the gallery's own directory (else: a copy elsewhere).
        """
        origin = (self._origin if own else
                  {"uid": self._uid, "sequence": self._sequence or 0, "directory": str(self._directory)})
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                "fingerprint": self._fingerprint, "family": self._family, "options": self._backend.options,
                "created": self._created, "count": len(self._backend), "next_id": self._next_id,
                "notes": dict(self._notes), "uid": self._uid, "origin": origin}
