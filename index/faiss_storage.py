"""The storage of a FAISS gallery: a FAISS index and its SQLite metadata, in memory until a save.

Both stores live in this process and change together: an add writes the vectors, then the rows (and the
idempotency key), and takes the vectors out again if the rows fail. A change waits for the next save,
which writes both files into a new versioned data directory (:func:`index.persist.save_directory`), so
within a transaction it is journalled to be undone in memory if that save fails (:mod:`index.journal`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.journal import AddRecord, RemoveRecord, undo
from index.locking import DirectoryLock
from index.manifest import INDEX_FILE, METADATA_FILE
from index.metadata import MetadataStore
from index.persist import check_new_target, save_directory
from index.storage import Journal, Storage, TimeWindow

# filter_mode -> the backend's use_selector (None: the backend picks; see index.faiss_backend).
USE_SELECTOR = {"auto": None, "selector": True, "wider": False}


class FaissStorage(Storage):
    """A FAISS backend with a :class:`~index.metadata.MetadataStore` beside it (see the module docstring)."""

    store: MetadataStore

    def find_request(self, key: str) -> tuple[str, list[int]] | None:
        return self.store.find_request(key)

    def add(self, vectors: np.ndarray, ids: np.ndarray, rows: list[Any], key: str | None, digest: str,
            journal: Journal | None) -> bool:
        self.backend.add_with_ids(vectors, ids)
        try:
            self.store.insert(ids, rows)
            if key is not None:
                self.store.record_request(key, digest, ids.tolist())
        except BaseException:
            self.backend.remove_ids(ids)
            self.store.delete(ids)
            raise
        if journal is not None:
            journal.append(AddRecord(ids, int(ids[0]), key))
        return True

    def remove(self, ids: np.ndarray, journal: Journal | None) -> bool:
        # Read what an undo would put back before it is gone (only inside a transaction: it costs a copy).
        record = RemoveRecord(ids, self.backend.reconstruct(ids), self.store.rows(ids)) if journal is not None else None
        self.backend.remove_ids(ids)
        self.store.delete(ids)
        if record is not None:
            journal.append(record)
        return True

    def undo(self, journal: Journal, next_id: int) -> int:
        return undo(journal, self.backend, self.store, next_id)

    def search(self, queries: np.ndarray, k: int, cameras: np.ndarray | None,
               window: TimeWindow | None) -> tuple[np.ndarray, np.ndarray]:
        """The filter becomes the list of allowed ids (from the metadata's columns) that the backend searches."""
        allowed = None if cameras is None and window is None else self.store.select_ids(cameras, window)
        if len(self.backend) == 0 or (allowed is not None and allowed.size == 0):
            return (np.full((len(queries), k), -np.inf, dtype=np.float32),
                    np.full((len(queries), k), -1, dtype=np.int64))
        return self.backend.search(queries, k, allowed, use_selector=USE_SELECTOR[self.runtime["filter_mode"]])

    def check_target(self, directory: Path) -> None:
        check_new_target(directory)

    def write(self, directory: Path, manifest: dict[str, Any], *, lock: DirectoryLock | None,
              expect_sequence: int | None, replace: bool) -> dict[str, Any]:
        """A new data directory holding the index and the metadata, then the manifest that names it."""
        def write_data(tmp: Path) -> dict[str, Any]:
            state = self.backend.serialize(tmp / INDEX_FILE)
            self.store.save(tmp / METADATA_FILE)
            return {"backend_state": state}

        _, written = save_directory(directory, write_data, {**manifest, "faiss_version": faiss.__version__},
                                    lock=lock, expect_sequence=expect_sequence, replace=replace)
        return written
