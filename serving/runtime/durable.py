"""The served gallery: searches, and changes that are on disk when acknowledged or did not happen.

What a server holds between requests, and the rules that keep it honest:

* **A change and its save are one step.** An add or a removal changes the gallery inside
  ``Gallery.transaction`` and saves before returning; if the save fails, the change is undone in memory
  too, so memory and disk agree and a retry cannot duplicate. A full disk (``ENOSPC``/``EDQUOT``) raises
  :class:`StorageFull`, anything else :class:`ChangeNotSaved`; both mean nothing changed.
* **One writer per gallery directory.** The server takes the directory's write lock at its first saved
  change (at start with ``exclusive``) and keeps it until shutdown; a change that finds the lock taken
  by another process, or the directory saved by another writer since this server loaded it, is
  refused (:class:`ChangeConflict`) and undone. ``reload`` brings the server up to date with the directory (or installs
  a staging copy, see :meth:`DurableGallery.reload`).
* **Idempotent adds.** An ``Idempotency-Key`` is recorded with the items it created, in the same save;
  a retry with the same key gets the same ids back and adds nothing.
* **Never serve a damaged gallery.** A search whose scores show damaged vectors (non-finite, or a
  cosine past 1) marks the gallery damaged (:class:`GalleryDamaged`): the server reports not ready.

Concurrency: a search is one ``Gallery.search_hits`` call, which reads the hits' metadata under the
gallery's own lock (so a concurrent removal never leaves a hit without its row) and needs no lock here;
changes are serialised by a thread lock and hold :attr:`rw` exclusively only while they change memory;
their save holds it shared. Searches continue meanwhile (they may see a change while it is being
saved: if the save fails, it is withdrawn before the answer).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.manifest import MANIFEST
from serving.core.config import Settings
from serving.runtime.hits import hit_dict

logger = logging.getLogger(__name__)

STORAGE_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class ChangeRefused(Exception):
    """A gallery change (or reload) that was not made, and why; nothing changed. Subclasses say what kind.

    Attributes:
        error: the machine-readable code, e.g. ``gallery_locked``.
        detail: one sentence.
    """

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error, self.detail = error, detail


class ChangeConflict(ChangeRefused):
    """The gallery's state forbids the change now: read-only, written by another process, changed on disk,
    holding unsaved changes, or a staging copy that is not a copy of it."""


class ChangeInvalid(ChangeRefused):
    """The request, or the gallery it would install, is unusable: a reused idempotency key, a damaged or
    mismatched gallery."""


class GalleryNotReady(ChangeRefused):
    """The served gallery is damaged or diverged; it takes no changes until it is sound again."""


class StorageFull(ChangeRefused):
    """The gallery's disk is full (``ENOSPC`` / ``EDQUOT``); the change was undone."""


class GalleryDiverged(ChangeRefused):
    """A failed save could not be undone: memory no longer matches disk, so every further change is refused."""


class ChangeNotSaved(Exception):
    """A change whose save failed for a reason that is not the client's or the disk's space (a server fault).

    The change was undone; the cause (with its traceback) goes to the log under the request id.
    """


class _SaveFailed(Exception):
    """Carries a save's failure out of the transaction (which undoes the change on the way)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class GalleryDamaged(Exception):
    """The gallery in memory gave an impossible answer (see :class:`index.errors.CorruptGalleryError`)."""


@dataclass
class AddResult:
    """What an add did: the ids, the gallery size after it, and whether it replayed an earlier request."""

    ids: list[int]
    size: int
    replayed: bool = False


class DurableGallery:
    """The gallery a server serves, with the rules of the module docstring.

    Args:
        settings: the server settings (``gallery``, ``save_on_mutation``, ``read_only``, ``staging_gallery``).
        gallery: the loaded ``index.Gallery``.
        fingerprint: the model's fingerprint (what reloaded galleries must have been built with).
        dim: the model's descriptor size.
        family: the model's family (its fp32 parent, for an INT8 model): reloaded galleries of the family
            are accepted as at start-up (see :func:`index.loading.check_model`).
    """

    def __init__(self, settings: Settings, gallery: Any, fingerprint: str | None, dim: int,
                 family: str | None = None) -> None:
        from index.locking import ReadWriteLock

        self.settings = settings
        self.gallery = gallery
        self.fingerprint = fingerprint
        self.family = family
        self.dim = dim
        self.rw = ReadWriteLock()
        # A thread lock, taken inside the worker thread: an asyncio lock would be released when a client
        # disconnects mid-request while the thread it started is still changing the gallery.
        self._mutation = threading.Lock()
        self.damaged: str | None = None  # why the gallery must not be served any more
        self.diverged: str | None = None  # a failed save whose undo failed: memory no longer matches disk
        self.last_save_error: str | None = None

    # -- state -----------------------------------------------------------------------------------
    @property
    def not_ready_reason(self) -> str | None:
        """Why the server must not be sent searches or changes now (None: it may)."""
        return self.damaged or self.diverged

    @property
    def unsaved_changes(self) -> int:
        """Changes held in memory only: with ``--no-save`` by design; otherwise none (or the server is diverged)."""
        return int(getattr(self.gallery, "unsaved_changes", 0))

    @property
    def writable(self) -> bool:
        return not self.settings.read_only and not getattr(self.gallery, "read_only", False)

    # -- queries ---------------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int, cameras: list[int] | None) -> list[list[dict[str, Any]]]:
        """Rank the gallery for each query vector: per query, the hits best first (:func:`hit_dict`).

        Raises:
            GalleryDamaged: the gallery was found damaged before, or this search finds it so.
        """
        from index.errors import CorruptGalleryError

        if self.damaged:
            raise GalleryDamaged(self.damaged)
        try:
            found = self.gallery.search_hits(np.asarray(vectors, dtype=np.float32), k, cameras=cameras)
        except CorruptGalleryError as exc:
            self.damaged = f"the gallery in memory is damaged ({exc}); restart the server from a checked gallery"
            logger.error("%s", self.damaged)
            raise GalleryDamaged(self.damaged) from None
        return [[hit_dict(rank, hit["id"], hit["score"], hit) for rank, hit in enumerate(row, start=1)]
                for row in found]

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """Hold the gallery for a read (searches and their metadata lookups under one shared hold).

        Raises:
            GalleryDamaged: the gallery was found damaged before, or a search inside the block finds it so
                (``CorruptGalleryError``): it is marked damaged and never served again.
        """
        from index.errors import CorruptGalleryError

        if self.damaged:
            raise GalleryDamaged(self.damaged)
        with self.rw.read():
            try:
                yield self.gallery
            except CorruptGalleryError as exc:
                self.damaged = f"the gallery in memory is damaged ({exc}); restart the server from a checked gallery"
                logger.error("%s", self.damaged)
                raise GalleryDamaged(self.damaged) from None

    def stats(self) -> dict[str, Any]:
        with self.rw.read():
            return dict(self.gallery.stats())

    # -- changes ---------------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, metadata: list[dict[str, Any]], key: str | None = None,
            digest: str = "") -> AddResult:
        """Add items and save them before returning (or change nothing and raise).

        Raises:
            ChangeRefused: read-only, not ready, locked or stale (a subclass says which kind), a full disk,
                a reused key.
            ChangeNotSaved: the save failed otherwise; nothing changed.
            index.errors.GalleryError: metadata the gallery refuses.
        """
        with self._mutation:
            self._check_can_change()
            if key is not None:
                replay = self._replay(key, digest)
                if replay is not None:
                    return replay

            def change() -> list[int]:
                with self.rw.write():
                    kwargs = {"idempotency_key": key, "request_digest": digest} if key is not None else {}
                    return [int(i) for i in np.asarray(self.gallery.add(np.asarray(vectors, dtype=np.float32),
                                                                        metadata, **kwargs))]

            ids = self._change_and_save(change)
            return AddResult(ids, len(self.gallery))

    def remove(self, item_id: int) -> int:
        """Remove one item and save before returning; returns the gallery size.

        Raises:
            index.errors.UnknownIdsError: no such item; and as :meth:`add`.
        """
        with self._mutation:
            self._check_can_change()

            def change() -> None:
                with self.rw.write():
                    self.gallery.remove([int(item_id)])

            self._change_and_save(change)
            return len(self.gallery)

    def remove_selected(self, select: Callable[[Any], Sequence[int]]) -> list[int]:
        """Remove the items ``select(gallery)`` names, chosen and removed under the change lock, in one save.

        For changes whose ids depend on the gallery's contents at that moment (retention's "older than"):
        no other change can slip in between choosing and removing. Nothing is saved when it names none.

        Raises:
            As :meth:`remove`; nothing is removed when the save fails.
        """
        with self._mutation:
            self._check_can_change()
            ids = [int(i) for i in select(self.gallery)]
            if not ids:
                return ids

            def change() -> None:
                with self.rw.write():
                    self.gallery.remove(ids)

            self._change_and_save(change)
            return ids

    def _check_can_change(self) -> None:
        if not self.writable:
            raise ChangeConflict("read_only", "this server opened the gallery read-only (--read-only); send "
                                             "changes to the server that writes it; nothing was changed")
        reason = self.not_ready_reason
        if reason:
            raise GalleryNotReady("not_ready", f"{reason}; nothing was changed")

    def _replay(self, key: str, digest: str) -> AddResult | None:
        found = self.gallery.find_request(key)
        if found is None:
            return None
        saved_digest, ids = found
        if saved_digest != digest:
            raise ChangeInvalid("idempotency_key_reused", f"the Idempotency-Key {key!r} was already used for a "
                                                         f"different request; nothing was changed")
        logger.info("replayed add for Idempotency-Key %r: ids %s (nothing added)", key, ids[:10])
        return AddResult(ids, len(self.gallery), replayed=True)

    def _change_and_save(self, change: Any) -> Any:
        """Run ``change`` (client errors propagate as they are) and save it, undoing it if the save fails."""
        from index.errors import UndoFailedError

        try:
            with self.gallery.transaction(guard=self.rw.write):
                result = change()
                try:
                    self._save()
                except Exception as exc:
                    raise _SaveFailed(exc) from exc
        except UndoFailedError as exc:
            self.diverged = str(exc)
            logger.error("%s", exc)
            raise GalleryDiverged("internal_error", f"{exc}; the server refuses further changes") from exc
        except _SaveFailed as failed:
            raise self._refusal(failed.cause) from failed.cause
        self.last_save_error = None
        return result

    def _refusal(self, exc: Exception) -> Exception:
        """The answer for a change whose save failed with ``exc`` (it has been undone)."""
        from index.errors import GalleryLockedError, StaleGalleryError

        if isinstance(exc, GalleryLockedError):
            return ChangeConflict("gallery_locked", f"{exc}; nothing was changed")
        if isinstance(exc, StaleGalleryError):
            return ChangeConflict("gallery_stale", f"{exc} (POST /gallery/reload); nothing was changed")
        if isinstance(exc, OSError):
            self.last_save_error = f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
            if exc.errno in STORAGE_FULL:
                return StorageFull("insufficient_storage", f"the gallery could not be saved: "
                                                           f"{self.last_save_error}; nothing was changed: free "
                                                           f"space on the gallery's disk and retry")
            return ChangeNotSaved(f"the gallery could not be saved ({self.last_save_error}); nothing was changed")
        self.last_save_error = f"{type(exc).__name__}: {exc}"
        return ChangeNotSaved(f"the gallery could not be saved ({type(exc).__name__}); nothing was changed")

    def _save(self) -> None:
        if not self.settings.save_on_mutation:
            return  # --no-save: kept in memory (reported as unsaved changes by /readyz and at shutdown)
        started = time.perf_counter()
        with self.rw.read():  # searches may go on while the files are written
            self.gallery.save(self.settings.gallery)
        logger.info("gallery saved to %s in %.1f ms", self.settings.gallery, 1000 * (time.perf_counter() - started))

    # -- reload / install ------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Bring the served gallery up to date from disk, swapping it in atomically for searches.

        Two cases:

        * ``staging_gallery`` is set and holds a gallery: **install** it. It must be a copy of this
          gallery at its current save (``python -m serving gallery copy``, then ``index`` into it), so
          no change made through the API since the copy can be lost; it is checked like any load, saved
          into the served directory as its next version, and served.
        * otherwise: **reload** the served directory (a read-only replica, or a server that never wrote
          and whose directory an indexer has since extended).

        Returns:
            ``{"source", "size", "previous_size", "sequence"}``.

        Raises:
            ChangeConflict: there is nothing safe to do (see the messages).
            ChangeInvalid: the gallery to load is damaged or was built with another model.
            StorageFull: installing the staging copy does not fit on disk.
        """
        from index import Gallery
        from index.errors import CorruptGalleryError, GalleryError, GalleryLockedError

        with self._mutation:
            previous, staging = self.gallery, self.settings.staging_gallery
            install = staging is not None and (Path(staging) / MANIFEST).is_file()
            if self.unsaved_changes:
                raise ChangeConflict("unsaved_changes", f"this server holds {self.unsaved_changes} change(s) "
                                                       f"that are not saved (--no-save): a reload would drop "
                                                       f"them; nothing was reloaded")
            try:
                if install:
                    fresh = self._load_staging(Path(staging))
                else:
                    if getattr(previous, "owns_directory", False):
                        raise ChangeConflict("nothing_to_reload", (
                            f"this server writes {self.settings.gallery} itself, so the disk holds nothing newer; to "
                            f"add a batch, copy it to the staging directory, index into that and reload"))
                    fresh = Gallery.load(self.settings.gallery, fingerprint=self.fingerprint, family=self.family,
                                         dim=self.dim,
                                         read_only=bool(self.settings.read_only))
            except GalleryLockedError as exc:
                raise ChangeConflict("gallery_locked", f"{exc}; nothing was reloaded") from None
            except CorruptGalleryError as exc:
                raise ChangeInvalid("gallery_damaged", f"{exc}; the served gallery is unchanged") from None
            except GalleryError as exc:
                raise ChangeInvalid("invalid_gallery", f"{exc}; the served gallery is unchanged") from None
            with self.rw.write():
                self.gallery = fresh
            self.damaged = None
            if previous is not fresh:
                previous.close()
            logger.info("%s %s: %d items (was %d), save %s", "installed" if install else "reloaded",
                        staging if install else self.settings.gallery, len(fresh), len(previous), fresh.sequence)
            return {"source": "staging" if install else "directory", "size": len(fresh),
                    "previous_size": len(previous), "sequence": fresh.sequence}

    def _load_staging(self, staging: Path) -> Any:
        from index import Gallery

        current = self.gallery
        if not self.settings.save_on_mutation:
            raise ChangeConflict("not_saving", "this server does not save the gallery (--no-save), so it cannot "
                                              "install the staging copy into it; nothing was reloaded")
        if not self.writable:
            raise ChangeConflict("read_only", "this server opened the gallery read-only; install the staging "
                                             "gallery through the server that writes it")
        fresh = Gallery.load(staging, fingerprint=self.fingerprint, family=self.family, dim=self.dim, claim=True)
        try:
            origin = fresh.origin or {}
            lineage = origin.get("uid") == current.uid and origin.get("sequence") == current.sequence
            if not lineage or current.unsaved_changes:
                raise ChangeConflict("staging_stale", (
                    f"the staging gallery {staging} is not a copy of the served gallery at its current save "
                    f"(copied from save {origin.get('sequence')!r} of gallery {origin.get('uid')!r}; serving save "
                    f"{current.sequence} of {current.uid}): installing it would lose the changes made since, or "
                    f"it was installed already; copy the served gallery again (python -m serving gallery copy) "
                    f"and index into the new copy"))
            fresh.rebase(self.settings.gallery, sequence=current.sequence, uid=current.uid)
            try:
                fresh.save(self.settings.gallery)
            except OSError as exc:
                if exc.errno in STORAGE_FULL:
                    raise StorageFull("insufficient_storage", f"the staging gallery could not be written into "
                                                              f"{self.settings.gallery}: {exc.strerror}; the "
                                                              f"served gallery is unchanged") from None
                raise
        except BaseException:
            fresh.close()
            raise
        return fresh
