"""Who writes a gallery directory: :class:`index.Gallery`'s hold on its directory's write lock (a mixin).

One process writes a gallery directory at a time (:func:`index.locking.acquire_directory`, an ``flock``
naming its holder). A gallery takes the lock at its first save to its directory, or earlier with
:meth:`DirectoryOwnership.claim` (``Gallery.create(directory=...)``, ``Gallery.load(claim=True)``), and keeps
it until ``close()``. Claiming also checks that the directory has not moved on since this gallery read it
(another writer's save), so a writer that came back never overwrites what it has not seen.
"""

from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Any

from index.errors import GalleryError, ReadOnlyGalleryError, StaleGalleryError
from index.locking import DirectoryLock, ReadWriteLock, acquire_directory
from index.manifest import MANIFEST, read_manifest


def same_dir(a: Path, b: Path) -> bool:
    """Whether two paths name one directory."""
    return Path(a).resolve() == Path(b).resolve()


class DirectoryOwnership:
    """Claiming, rebasing and releasing a gallery's directory (the gallery's state; see the module docstring)."""

    _directory: Path | None
    _read_only: bool
    _sequence: int | None
    _uid: str
    _origin: dict[str, Any] | None
    _owner: DirectoryLock | None
    _finalizer: weakref.finalize | None
    _writer: threading.RLock
    _lock: ReadWriteLock
    _storage: Any  # index.storage.Storage
    _backend: Any  # index.backends.VectorBackend

    def claim(self, directory: str | Path | None = None) -> Any:
        """Take the write lock of this gallery's directory now (instead of at the first save).

        Args:
            directory: the directory, for a gallery that has none yet (``create``d, never saved).

        Returns:
            The gallery (for chaining).

        Raises:
            GalleryLockedError: another process writes the directory (the message names it).
            StaleGalleryError: another writer saved the directory since this gallery read it.
            ReadOnlyGalleryError: the gallery was opened read-only.
        """
        if directory is not None:
            if self._directory is not None and not same_dir(directory, self._directory):
                raise GalleryError(f"this gallery belongs to {self._directory}; it cannot claim {directory}")
            self._directory = Path(directory)
        if self._directory is None:
            raise GalleryError("this gallery has no directory yet: give claim() one, or save() it first")
        if self._read_only:
            raise ReadOnlyGalleryError(f"gallery {self._directory} was opened read-only; it cannot be claimed for "
                                       f"writing")
        if self._owner is None or not self._owner.held:
            self._storage.check_target(self._directory)  # never leave a lock file in someone else's folder
            lock = acquire_directory(self._directory)
            try:
                self._check_not_stale(self._directory)
            except BaseException:
                lock.release()
                raise
            self._adopt(lock)
        return self

    def _adopt(self, lock: DirectoryLock) -> None:
        self._owner = lock
        # A gallery dropped without close() still releases the lock (kernel flock goes with the last reference).
        self._finalizer = weakref.finalize(self, lock.release)

    def _check_not_stale(self, directory: Path) -> None:
        manifest_path = directory / MANIFEST
        if not manifest_path.exists():
            if self._sequence is not None:
                raise StaleGalleryError(f"the gallery in {directory} was removed since this gallery was read from it")
            return
        found = int(read_manifest(directory).get("sequence", 0))
        if self._sequence is None:
            raise StaleGalleryError(f"{directory} already holds a gallery (save {found}); load that one to change it, "
                                    f"or use a new directory")
        if found != self._sequence:
            raise StaleGalleryError(f"the gallery in {directory} was saved by another writer since this one read it "
                                    f"(save {found} on disk, {self._sequence} read): reload it before changing it")

    def rebase(self, directory: str | Path, *, sequence: int | None, uid: str) -> None:
        """Make this gallery the next version of another directory's gallery (installing a staging copy).

        After this, ``save(directory)`` writes it there as the version after ``sequence`` (refused, as
        always, if the directory has moved on meanwhile), under that gallery's ``uid``. The lock of the
        directory this gallery came from is released.

        Args:
            directory: the directory to save to from now on.
            sequence: the save of ``directory`` this gallery supersedes (None: it holds none yet).
            uid: the uid of the gallery in ``directory``, kept so that copies stay traceable to it.
        """
        if self._read_only:
            raise ReadOnlyGalleryError(f"gallery {self._directory} was opened read-only; it cannot be rebased")
        with self._writer:
            self._release()
            self._directory, self._sequence, self._uid, self._origin = Path(directory), sequence, uid, None

    @property
    def owns_directory(self) -> bool:
        """Whether this gallery holds its directory's write lock."""
        return self._owner is not None and self._owner.held

    def close(self) -> None:
        """Release the directory's write lock, and the backend's connection if it has one.

        A FAISS gallery stays usable in memory (a later save claims again); a Milvus gallery's connection
        is closed, so it cannot be used afterwards.
        """
        self._release()
        with self._lock.write():  # a search still running on the connection finishes first
            self._backend.close()

    def _release(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # releases once, idempotently
        self._owner = self._finalizer = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
