"""A gallery's storage: its vector backend and metadata store kept in step, and how a change becomes durable.

:class:`index.Gallery` owns what every gallery shares: ids, validation, normalisation, its locks, transactions,
the directory's ownership and the manifest's fields. Everything that differs between stores is a method of
its :class:`Storage`, so the gallery never asks which store it has:

* :class:`index.faiss_storage.FaissStorage`: a FAISS index with an in-memory SQLite table beside it. A change
  lives in memory until the next save (a new versioned data directory, :func:`index.persist.save_directory`),
  so it is journalled for a transaction to undo, and idempotency keys are saved with the rows.
* :class:`index.milvus_persist.MilvusStorage`: one Milvus collection holding vectors and metadata, which commits
  every change itself: nothing is left to undo or to count as unsaved, and a save flushes the collection and
  writes the manifest that points at it (:func:`index.persist.save_manifest`).

:func:`index.registry.create_storage` builds the storage of a new gallery and :func:`index.loading.read_gallery`
that of a saved one (a :class:`LoadedGallery`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import MetadataReader, VectorBackend
from index.journal import AddRecord, RemoveRecord
from index.locking import DirectoryLock

Journal = list[AddRecord | RemoveRecord]
TimeWindow = tuple[float | None, float | None]


class Storage(abc.ABC):
    """The vector backend and metadata store of one gallery (see the module docstring).

    The gallery calls every method under its own locks: mutations under the write lock, searches and
    saves under the read lock (so a store's search must be safe to run concurrently).

    Attributes:
        backend: the vector store.
        store: where the gallery reads metadata (``Gallery.get``, stats, resume by source).
        runtime: the runtime options this process opened the gallery with, as ``stats()`` shows them.
    """

    def __init__(self, backend: VectorBackend, store: MetadataReader, runtime: dict[str, Any]) -> None:
        self.backend = backend
        self.store = store
        self.runtime = runtime

    def check_key(self, key: str) -> None:
        """Refuse an idempotency key this storage cannot record (called before anything changes)."""

    def find_request(self, key: str) -> tuple[str, list[int]] | None:
        """``(request_digest, ids)`` of the saved add that recorded ``key``, or None."""
        return None

    @abc.abstractmethod
    def add(self, vectors: np.ndarray, ids: np.ndarray, rows: list[Any], key: str | None, digest: str,
            journal: Journal | None) -> bool:
        """Store new items with their validated rows, all or nothing, recording ``key`` with them when given.

        Args:
            vectors: ``[n, dim]`` normalised float32.
            ids: their new ids (the first one is the gallery's next id before this add).
            rows: :func:`index.rows.validate_metadata` rows.
            key, digest: the idempotency key and request digest (None: no key).
            journal: an open transaction's undo records, where this add's record goes (None: no transaction).

        Returns:
            Whether the change waits for a save (False when the store committed it itself).
        """

    @abc.abstractmethod
    def remove(self, ids: np.ndarray, journal: Journal | None) -> bool:
        """Remove items (all present), recording what an undo puts back in ``journal`` when given.

        Returns:
            Whether the change waits for a save.
        """

    def undo(self, journal: Journal, next_id: int) -> int:
        """Undo the records of a failed transaction (newest first); returns the next id to keep."""
        raise NotImplementedError(f"the {self.backend.name} store keeps no changes in memory to undo")

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, cameras: np.ndarray | None,
               window: TimeWindow | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` among the items of ``cameras`` stamped within ``window`` (either None: no filter).

        The arguments are checked (:mod:`index.validate`); the answer is as
        :meth:`index.backends.VectorBackend.search`'s: ``[Q, k]`` scores and ids, ``-inf`` / ``-1`` padded.
        """

    @abc.abstractmethod
    def check_target(self, directory: Path) -> None:
        """Refuse a directory this gallery may not be saved to (files that are not a gallery of this store).

        Called before the directory's lock file is put there, and again under the lock by :meth:`write`.

        Raises:
            GalleryError: naming what is in the way.
        """

    @abc.abstractmethod
    def write(self, directory: Path, manifest: dict[str, Any], *, lock: DirectoryLock | None,
              expect_sequence: int | None, replace: bool) -> dict[str, Any]:
        """Atomically save the gallery to ``directory`` under ``manifest``'s fields; returns the manifest written.

        Args:
            directory: the gallery directory.
            manifest: the gallery's manifest fields; the store adds its own (where its data is).
            lock, expect_sequence, replace: as :func:`index.persist.save_directory`'s.

        Raises:
            GalleryLockedError, StaleGalleryError, GalleryError, OSError: as
                :func:`index.persist.save_directory`; nothing is changed on disk then.
        """


@dataclass
class LoadedGallery:
    """What :func:`index.loading.read_gallery` read: the manifest, the storage, whether checksums were
    verified, and the next free id (a Milvus collection may know a later one than the manifest)."""

    manifest: dict[str, Any]
    storage: Storage
    checksummed: bool
    next_id: int
