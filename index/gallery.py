"""``Gallery``: the descriptor store the server searches (public API, see the README).

A gallery is a vector backend plus a metadata store, picked by :mod:`index.registry`: a FAISS index
(the default; the registry lists the kinds) with a SQLite table beside it, or a Milvus collection that
holds both (:mod:`index.milvus_backend`). They are kept in step under one readers-writer lock, with
stable int64 ids that the gallery assigns and never reuses, and an atomic, checksummed on-disk format
(:mod:`index.persist`; a Milvus gallery's directory holds only a manifest pointing at its collection,
:mod:`index.milvus_persist`).

Conventions callers rely on:

* Scores are cosine similarities (inner products of L2-normalised vectors, normalised here and
  nowhere else in the serving path), higher is more similar, best first, always finite and within
  [-1, 1] (up to 1e-3 of float rounding; a search that would break this raises
  :class:`~index.errors.CorruptGalleryError` instead of answering).
* Where fewer than ``k`` results exist, rows end with id ``-1`` and score ``-inf`` (not NaN: ``-inf``
  sorts last and compares cleanly).
* Thread safety: any number of concurrent ``search``/``get``/``stats``/``save`` calls, or one
  ``add``/``remove``/``train`` at a time (writers are preferred; see :mod:`index.locking`).
  :meth:`search_hits` reads the hits' metadata under the same hold as the search, so a concurrent
  removal never leaves a hit without its row (a caller needs no lock of its own around the two).
* One writer per directory: the first save to a directory (or ``claim()``, or ``load(claim=True)``)
  takes the directory's write lock, held until ``close()``; another process is refused at once, with
  the holder named. A save also refuses to overwrite a version it has not seen (another writer's).
  ``load(read_only=True)`` takes no lock and never writes the directory.
* ``with gallery.transaction(): add/remove ...; save(...)``: if anything in the block raises, the
  changes are undone in memory too, so memory and disk never disagree after a failed save.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ContextManager

import faiss
import numpy as np

from index import persist
from index.errors import (CorruptGalleryError, GalleryError, ReadOnlyGalleryError, StaleGalleryError, UndoFailedError,
                          UnknownIdsError)
from index.journal import AddRecord, RemoveRecord, undo
from index.backends import MetadataReader, VectorBackend
from index.loading import check_model, read_gallery
from index.locking import DirectoryLock, ReadWriteLock, acquire_directory, read_holder
from index.manifest import legacy_uid
from index.metadata import GROUP_BY, validate_metadata
from index.registry import check_backend, create_storage
from index.validate import as_cameras, as_ids, as_k, as_time_range, check_scores, normalized

log = logging.getLogger(__name__)

# filter_mode -> the backends' use_selector (None: the backend picks; see index.faiss_backend).
_USE_SELECTOR = {"auto": None, "selector": True, "wider": False}


def check_group_by(group_by: str) -> str:
    """``group_by`` if it is one :meth:`Gallery.group_counts` knows, else a :class:`GalleryError` listing them."""
    if group_by not in GROUP_BY:
        raise GalleryError(f"unknown group_by {group_by!r}; valid values: {', '.join(GROUP_BY)}")
    return group_by


def _same_dir(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class Gallery:
    """A searchable, persistent set of descriptors with per-item metadata.

    Build one with :meth:`create` or :meth:`load`, not the constructor.
    """

    def __init__(self, *, backend: VectorBackend, store: MetadataReader, fingerprint: str | None,
                 runtime: dict[str, Any], next_id: int, created: str, saved: str | None = None,
                 directory: Path | None = None, read_only: bool = False, sequence: int | None = None, uid: str | None = None,
                 origin: dict[str, Any] | None = None, family: str | None = None,
                 notes: dict[str, str] | None = None) -> None:
        self._backend = backend
        self._store = store
        self._fingerprint = fingerprint
        self._family = family or fingerprint  # the fp32 model of the indexing model (see index.loading)
        self._mixed_precision = False  # opened by another member of the family (fp32 <-> INT8)
        self._runtime = runtime
        self._next_id = next_id
        self._created = created
        self._saved = saved
        self._directory = directory
        self._read_only = read_only
        self._sequence = sequence  # the save sequence of `directory` this object last read or wrote
        self._uid = uid or uuid.uuid4().hex
        self._origin = origin  # for a copy: the gallery (uid, sequence) it was copied from
        self._notes = dict(notes or {})  # the caller's annotations, saved in the manifest (see set_note)
        self._lock = ReadWriteLock()
        # Held by a transaction from its first change to its end, and by every change and save: so a
        # save from another thread never writes a transaction's changes before they are committed.
        self._writer = threading.RLock()
        self._journal: list[AddRecord | RemoveRecord] | None = None
        self._unsaved = 0  # changes since the last save to `directory`
        self._owner: DirectoryLock | None = None
        self._finalizer: weakref.finalize | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, dim: int, kind: str = "flat", fingerprint: str | None = None, *, backend: str = "faiss",
               uri: Any = None, directory: str | Path | None = None, family: str | None = None,
               **options: Any) -> Gallery:
        """An empty gallery.

        Args:
            dim: descriptor size (1536 for the paper's 6x256 model).
            kind: ``flat`` (exact, default), ``flat_fp16`` (exact on fp16 storage), ``ivf_flat``,
                ``ivf_pq`` or ``hnsw``.
            fingerprint: the model fingerprint (sha256 of the ONNX file); loading checks it.
            family: the fingerprint of the fp32 model the indexing model computes (an INT8 model's
                parent; default: ``fingerprint``): other members of the family may query the gallery.
            **options: kind options (``nlist``, ``nprobe``, ``train_size`` for IVF; ``m``, ``nbits`` for
                IVF-PQ; ``hnsw_m``, ``ef_construction``, ``ef_search`` for HNSW) and runtime options
                (``device``: auto/cpu/gpu, ``gpu_fp16``, ``filter_mode``: auto/selector/wider).
            backend: ``"faiss"`` (in-process, default) or ``"milvus"`` (a Milvus collection: kinds ``flat``,
                ``ivf_flat``, ``ivf_pq``, ``hnsw``; see :mod:`index.milvus_persist`).
            uri: for ``backend="milvus"``: a Milvus Lite file (``"gallery/milvus.db"``) or a server address
                (``"http://host:19530"``).
            directory: where this gallery will be saved; its write lock is taken now, so that a second
                writer is refused before either does any work (it must hold no gallery yet).

        Raises:
            GalleryLockedError: ``directory`` is being written by another process.
        """
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise GalleryError(f"dim must be a positive int, got {dim!r}")
        for name, value in (("fingerprint", fingerprint), ("family", family)):
            if value is not None and not isinstance(value, str):
                raise GalleryError(f"{name} must be a str or None, got {type(value).__name__}")
        storage = create_storage(backend, kind, int(dim), fingerprint, uri, options)
        gallery = cls(backend=storage.backend, store=storage.store, fingerprint=fingerprint, runtime=storage.runtime,
                      next_id=0, created=persist.utc_now(), family=family)
        if directory is not None:
            gallery._directory = Path(directory)
            gallery.claim()
        return gallery

    @classmethod
    def load(cls, directory: str | Path, fingerprint: str | None = None, *, dim: int | None = None,
             kind: str | None = None, backend: str | None = None, uri: Any = None, read_only: bool = False,
             claim: bool = False, family: str | None = None, **options: Any) -> Gallery:
        """Open a saved gallery, checking it against the model that will query it, and checking its files.

        Args:
            directory: a directory written by :meth:`save`.
            fingerprint: the querying model's fingerprint; must equal the one saved (when given), or
                ``family`` must equal the gallery's family (fp32 <-> INT8 of one model: accepted with
                one warning, and :attr:`mixed_precision` is True).
            family: the querying model's family (see :meth:`create`).
            dim: the querying model's descriptor size; must equal the saved one (when given).
            kind: the kind expected (an error if the saved one differs); ``flat_blas``, a removed
                kind, is accepted as ``flat``, and galleries saved as ``flat_blas`` open as ``flat``.
            **options: runtime options (``device``, ``gpu_fp16``, ``filter_mode``) and search-time
                parameters (``nprobe``, ``ef_search``); build options cannot change after creation.
            backend: when given, the backend the gallery must have (``"faiss"`` or ``"milvus"``); the
                manifest says which it is.
            uri: for a milvus gallery, the Milvus address to use instead of the saved one (the server moved).
            read_only: never take the directory's write lock nor write to it (a replica serving a
                snapshot, an evaluation); changes and saves to ``directory`` are refused.
            claim: take the directory's write lock now (a writer that must not start if another one
                runs); otherwise it is taken by the first save.

        Raises:
            GalleryLockedError: ``claim`` and another process writes the directory.
            CorruptGalleryError: a file is damaged (one line naming it; see :mod:`index.loading`).
            GalleryError: not a gallery, or fingerprint or dim mismatch.
        """
        directory = Path(directory)
        saved_backend = persist.read_manifest(directory).get("backend", "faiss")
        if backend is not None and check_backend(backend) != saved_backend:
            raise GalleryError(f"gallery {directory} is a {saved_backend} gallery, not a {backend} one")
        if read_only and claim:
            raise GalleryError("read_only=True and claim=True contradict each other: a read-only gallery takes no lock")
        owner = acquire_directory(directory) if claim else None
        mixed = [False]  # set by read(): the model is another precision of the gallery's
        try:
            def read(manifest: dict[str, Any]) -> Any:
                mixed[0] = check_model(directory, manifest, fingerprint, dim, family)
                return read_gallery(directory, manifest, kind, uri, options)

            loaded = persist.retry_if_swapped(directory, read, attempts=1 if claim else 3)
        except BaseException:
            if owner is not None:
                owner.release()
            raise
        manifest = loaded.manifest
        gallery = cls(backend=loaded.backend, store=loaded.store, fingerprint=manifest.get("fingerprint"),
                      runtime=loaded.runtime, next_id=loaded.next_id, created=manifest.get("created", ""),
                      saved=manifest.get("saved"), directory=directory, read_only=read_only,
                      sequence=int(manifest.get("sequence", 0)), uid=manifest.get("uid") or legacy_uid(manifest),
                      origin=manifest.get("origin"), family=manifest.get("family"),
                      notes=manifest.get("notes"))
        if mixed[0]:
            gallery._mixed_precision = True
            log.warning("gallery %s was indexed with model %s and is opened with model %s, another precision of the same "
                        "fp32 model (family %s): scores mix precisions (`python -m export verify --reference` "
                        "measures the cost); re-index with this model to remove the mix", directory,
                        str(manifest.get("fingerprint"))[:12], str(fingerprint)[:12], str(family)[:12])
        if owner is not None:
            gallery._adopt(owner)
        if read_only:
            holder = read_holder(directory)
            writer = (f"written by pid {holder['pid']} ({holder.get('command', '?')})" if holder.get("alive")
                      else "no writer holds it")
            log.info("opened gallery %s read-only (save %s; %s): changes are refused and nothing is written there",
                     directory, gallery._sequence, writer)
        return gallery

    # ----------------------------------------------------------------- ownership
    def claim(self, directory: str | Path | None = None) -> Gallery:
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
            if self._directory is not None and not _same_dir(directory, self._directory):
                raise GalleryError(f"this gallery belongs to {self._directory}; it cannot claim {directory}")
            self._directory = Path(directory)
        if self._directory is None:
            raise GalleryError("this gallery has no directory yet: give claim() one, or save() it first")
        if self._read_only:
            raise ReadOnlyGalleryError(f"gallery {self._directory} was opened read-only; it cannot be claimed for "
                                       f"writing")
        if self._owner is None or not self._owner.held:
            persist.check_new_target(self._directory)  # never leave a lock file in someone else's folder
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
        manifest_path = directory / persist.MANIFEST
        if not manifest_path.exists():
            if self._sequence is not None:
                raise StaleGalleryError(f"the gallery in {directory} was removed since this gallery was read from it")
            return
        found = int(persist.read_manifest(directory).get("sequence", 0))
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

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return self._backend.dim

    @property
    def kind(self) -> str:
        return self._backend.kind

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint

    @property
    def family(self) -> str | None:
        """The fp32 model of the model that indexed this gallery (its fingerprint, or an INT8 model's parent)."""
        return self._family

    @property
    def mixed_precision(self) -> bool:
        """Whether the gallery was opened by another member of its family (fp32 gallery, INT8 queries or reverse)."""
        return self._mixed_precision

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def directory(self) -> Path | None:
        """The directory this gallery was loaded from or saves to."""
        return self._directory

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def sequence(self) -> int | None:
        """The save sequence of :attr:`directory` this gallery last read or wrote (None before its first save)."""
        return self._sequence

    @property
    def uid(self) -> str:
        """A random id given at creation and kept by every save: copies record which gallery they came from."""
        return self._uid

    @property
    def origin(self) -> dict[str, Any] | None:
        """For a gallery saved as a copy (``save(other_dir)``): the ``uid`` and ``sequence`` it was copied from."""
        return dict(self._origin) if self._origin else None

    @property
    def notes(self) -> dict[str, str]:
        """Annotations kept with the gallery by whoever builds it (e.g. ``image_root``: the folder the serving
        indexer read the crops from, which ``serve`` uses for thumbnails). Opaque strings to the index."""
        return dict(self._notes)

    def set_note(self, key: str, value: str) -> None:
        """Record an annotation; it is written by the next :meth:`save` (with the manifest, atomically).

        Raises:
            TypeError: ``key`` or ``value`` is not a string (the manifest keeps strings only).
        """
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"gallery notes are strings; got {type(key).__name__}: {type(value).__name__}")
        with self._writer:
            self._notes[key] = value

    @property
    def unsaved_changes(self) -> int:
        """Adds and removals made since the last save to :attr:`directory` (0 after a save)."""
        return self._unsaved

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._backend)

    def __repr__(self) -> str:
        return f"Gallery(kind={self.kind!r}, dim={self.dim}, count={len(self)}, device={self.device!r})"

    # ----------------------------------------------------------------- mutation
    @contextlib.contextmanager
    def transaction(self, guard: Callable[[], ContextManager[Any]] | None = None) -> Iterator[Gallery]:
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
                self._next_id = undo(journal, self._backend, self._store, self._next_id)
                self._unsaved = max(0, self._unsaved - len(journal))
        except Exception as exc:
            raise UndoFailedError(f"a change to the gallery failed to save and could not be undone in memory ({exc}); "
                                  f"memory no longer matches the last save: restart from the saved gallery") from exc
        log.info("undid %d gallery change(s) that were not saved", len(journal))

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyGalleryError(f"gallery {self._directory} was opened read-only; it cannot be changed")

    def add(self, vectors: Any, metadata: Any, *, idempotency_key: str | None = None,
            request_digest: str = "") -> np.ndarray:
        """Add descriptors with their metadata; returns their new ids.

        Args:
            vectors: ``[N, dim]`` descriptors (any real dtype; normalised here).
            metadata: ``N`` dicts: ``camera`` (int, required), ``person_label`` (int or str),
                ``source`` (path or URI), ``timestamp`` (Unix seconds, datetime or ISO-8601; stored
                as Unix seconds), ``extra`` (JSON-able dict), ``track_id`` (int or str: the camera track).
            idempotency_key: when given and already recorded (by an add that was saved), nothing is
                added and the ids of that add are returned; otherwise the key is recorded with the ids,
                in the same save. A retried request therefore never adds twice. Milvus galleries record
                no keys (Milvus commits each insert itself, outside the gallery's save) and refuse one.
            request_digest: what identifies the request behind the key (e.g. a hash of its bytes); a key
                reused with another digest is refused.

        Returns:
            int64 ``[N]`` ids, increasing, never used before in this gallery.

        Raises:
            GalleryError: wrong shape, NaN/inf/zero vectors, metadata of the wrong length or with a
                bad/missing field, or an idempotency key reused for another request. Nothing is changed then.
        """
        self._check_writable()
        x = normalized(vectors, self.dim, "vectors")
        rows = validate_metadata(metadata, len(x))
        if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
            raise GalleryError(f"idempotency_key must be a non-empty str, got {idempotency_key!r}")
        if idempotency_key is not None and self._backend.commits_itself:
            name = self._backend.name
            raise GalleryError(f"{name} galleries do not record idempotency keys (the {name} store commits each "
                               f"insert itself, outside the gallery's save); send the add without one")
        with self._writer, self._lock.write():
            if idempotency_key is not None:
                replay = self._replay(idempotency_key, request_digest)
                if replay is not None:
                    return replay
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            if len(x) == 0:
                return ids
            self._insert(x, ids, rows, idempotency_key, request_digest)
            if self._journal_changes:
                self._journal.append(AddRecord(ids, self._next_id, idempotency_key))
            self._next_id += len(x)
            self._changed()
        return ids

    def _insert(self, x: np.ndarray, ids: np.ndarray, rows: list[Any], key: str | None, digest: str) -> None:
        """Write new items to the backend and the metadata store, all or nothing."""
        if self._backend.holds_metadata:
            self._backend.add_items(x, ids, rows)  # one write: the rows are fields of the vectors' records
            return
        self._backend.add_with_ids(x, ids)
        try:
            self._store.insert(ids, rows)
            if key is not None:
                self._store.record_request(key, digest, ids.tolist())
        except BaseException:
            self._backend.remove_ids(ids)
            self._store.delete(ids)
            raise

    @property
    def _journal_changes(self) -> bool:
        # A store that commits each change itself has nothing in memory to undo (see VectorBackend).
        return self._journal is not None and not self._backend.commits_itself

    def _changed(self) -> None:
        if not self._backend.commits_itself:
            self._unsaved += 1

    def _replay(self, key: str, digest: str) -> np.ndarray | None:
        found = self._store.find_request(key)
        if found is None:
            return None
        saved_digest, ids = found
        if saved_digest != digest:
            raise GalleryError(f"idempotency key {key!r} was already used for a different request; use a new key "
                               f"for a new request")
        return np.asarray(ids, dtype=np.int64)

    def find_request(self, key: str) -> tuple[str, list[int]] | None:
        """``(request_digest, ids)`` of the saved add that recorded ``key``, or None (always, for Milvus)."""
        if self._backend.commits_itself:
            return None  # it records no keys (see add)
        with self._lock.read():
            return self._store.find_request(key)

    def remove(self, ids: Any, *, missing: str = "error") -> int:
        """Remove items by id; returns how many were removed.

        Args:
            ids: an id or ids.
            missing: ``"error"`` (raise :class:`UnknownIdsError` and change nothing if any id is
                unknown) or ``"ignore"``.
        """
        if missing not in ("error", "ignore"):
            raise GalleryError(f"missing must be 'error' or 'ignore', got {missing!r}")
        self._check_writable()
        wanted = np.unique(as_ids(ids))
        with self._writer, self._lock.write():
            present = self._store.present(wanted)
            if missing == "error" and not present.all():
                raise UnknownIdsError(wanted[~present].tolist())
            found = wanted[present]
            if found.size:
                record = None
                if self._journal_changes:  # read what an undo would put back, before it is gone
                    record = RemoveRecord(found, self._backend.reconstruct(found), self._store.rows(found))
                self._backend.remove_ids(found)
                if not self._backend.holds_metadata:
                    self._store.delete(found)
                if record is not None:
                    self._journal.append(record)
                self._changed()
        return int(found.size)

    def train(self, vectors: Any, *, expected_size: int | None = None) -> None:
        """Train an IVF gallery now on a sample of descriptors (not added); other kinds ignore it.

        Without this, IVF kinds train themselves on the gallery once it holds ``train_size`` items.
        ``expected_size``: the number of items the gallery is being built for, so an automatic ``nlist``
        is sized for it (~2·sqrt(N)) rather than for the sample (a batch job knows its image count).
        """
        self._check_writable()
        x = normalized(vectors, self.dim, "training vectors")
        if expected_size is not None and (isinstance(expected_size, bool) or not isinstance(expected_size, int)
                                          or expected_size < 1):
            raise GalleryError(f"expected_size must be a positive int, got {expected_size!r}")
        with self._writer, self._lock.write():
            self._backend.train(x, expected_size)

    def set_search_params(self, **params: Any) -> None:
        """Change ``nprobe`` (IVF) or ``ef_search`` (HNSW) for later searches (and saves)."""
        with self._lock.write():
            self._backend.set_search_params(**params)

    def tune(self, target_recall: float, *, k: int = 10, sample: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Pick ``nprobe`` (IVF) or ``ef_search`` (HNSW) to reach ``target_recall`` (recall@k), measured now.

        The queries are ``sample`` of the gallery's own items, each held out of its own answer, against
        the index's exhaustive search (:mod:`index.tuning`). The parameter is set for later searches and
        saves; the record (target, measured recall, value, sample) is in :meth:`stats` and the manifest.

        Raises:
            GalleryError: an exact kind, an untrained IVF gallery, too few items, or a target outside (0, 1].
        """
        with self._lock.write():
            return dict(self._backend.tune(target_recall, as_k(k), int(sample), int(seed)))

    # ----------------------------------------------------------------- queries
    def search(self, queries: Any, k: int, cameras: Any = None, *,
               time_range: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery items for each query by cosine similarity.

        Args:
            queries: ``[Q, dim]`` (or one ``[dim]`` vector) raw descriptors; normalised here.
            k: results per query.
            cameras: only items from this camera or these cameras (``None``: all).
            time_range: ``(start, end)``, inclusive, either end ``None`` for open; items without
                a timestamp never match.

        Returns:
            ``(scores, ids)``: float32 and int64 ``[Q, k]``, best first; ``-inf`` / ``-1`` pad
            rows with fewer than ``k`` matches. A filter still yields ``k`` results when at least
            ``k`` items match (exactly so for exact kinds).

        Raises:
            CorruptGalleryError: a score came out non-finite or outside [-1, 1] (damaged vectors in memory).
        """
        q, k, cams, window = self._query(queries, k, cameras, time_range)
        with self._lock.read():
            scores, ids = self._ranked(q, k, cams, window)
        return self._checked(scores, ids)

    def search_hits(self, queries: Any, k: int, cameras: Any = None, *,
                    time_range: Any = None) -> list[list[dict[str, Any]]]:
        """:meth:`search`, with each hit's metadata read under the same hold of the gallery's lock.

        A concurrent ``remove`` therefore waits for both steps, and every hit has its row: what a server
        answering with metadata needs, without a lock of its own around ``search`` and ``get``.

        Args:
            queries, k, cameras, time_range: as :meth:`search`.

        Returns:
            Per query, best first and without the ``-1`` padding, dicts as :meth:`get` gives (``id``,
            ``camera``, ``person_label``, ``source``, ``timestamp``, ``extra``) plus ``score`` (float).

        Raises:
            CorruptGalleryError: as :meth:`search`.
        """
        q, k, cams, window = self._query(queries, k, cameras, time_range)
        with self._lock.read():
            scores, ids = self._checked(*self._ranked(q, k, cams, window))
            found = np.unique(ids[ids >= 0])
            rows = self._store.get(found.tolist()) if found.size else {}
        return [[{**rows[int(i)], "extra": dict(rows[int(i)]["extra"]), "score": float(score)}
                 for score, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]

    def _query(self, queries: Any, k: int, cameras: Any,
               time_range: Any) -> tuple[np.ndarray, int, np.ndarray | None, tuple[float | None, float | None] | None]:
        return (normalized(queries, self.dim, "queries", allow_1d=True), as_k(k), as_cameras(cameras),
                as_time_range(time_range))

    def _ranked(self, q: np.ndarray, k: int, cams: np.ndarray | None,
                window: tuple[float | None, float | None] | None) -> tuple[np.ndarray, np.ndarray]:
        """The backend's top-``k`` (called under the read lock)."""
        if self._backend.holds_metadata:  # the filter is evaluated inside the store's own search
            return self._backend.search_where(q, k, cams, window)
        allowed = None if cams is None and window is None else self._store.select_ids(cams, window)
        if len(self._backend) == 0 or (allowed is not None and allowed.size == 0):
            return (np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64))
        return self._backend.search(q, k, allowed, use_selector=_USE_SELECTOR[self._runtime["filter_mode"]])

    def _checked(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return check_scores(scores, ids, clip=self._backend.estimated_scores, where=self._directory or "gallery")

    def get(self, ids: Any, *, missing: str = "error") -> list[dict[str, Any] | None]:
        """Metadata for ``ids``, in order: dicts with ``id``, ``camera``, ``person_label``,
        ``source``, ``timestamp`` (Unix seconds or None), ``extra`` (dict), ``track_id`` (or None).

        Args:
            ids: ids (e.g. a row of :meth:`search` ids).
            missing: ``"error"`` raises :class:`UnknownIdsError` for unknown ids (including the
                ``-1`` padding); ``"none"`` puts ``None`` in their place.
        """
        if missing not in ("error", "none"):
            raise GalleryError(f"missing must be 'error' or 'none', got {missing!r}")
        wanted = as_ids(ids).tolist()
        with self._lock.read():
            rows = self._store.get(wanted)
        unknown = sorted({i for i in wanted if i not in rows})
        if unknown and missing == "error":
            raise UnknownIdsError(unknown)
        return [dict(rows[i], extra=dict(rows[i]["extra"])) if i in rows else None for i in wanted]

    def vectors(self, ids: Any) -> np.ndarray:
        """The stored (L2-normalised) descriptors of ``ids``, ``[n, dim]`` float32, in the order given.

        What re-ranking a neighbourhood needs (``index.reranking``): the gallery-gallery distances of the
        items a search returned. Exact for ``flat``; ``flat_fp16`` gives them back rounded to fp16; the
        approximate kinds give what their codes keep (IVF-PQ: an approximation), which is why the server
        refuses ``rerank`` on them.

        Raises:
            UnknownIdsError: an id is not in the gallery.
            GalleryError: the kind cannot give vectors back.
        """
        wanted = as_ids(ids)
        with self._lock.read():
            present = np.isin(wanted, self._store.ids())
            if not present.all():
                raise UnknownIdsError(sorted(set(wanted[~present].tolist())))
            if wanted.size == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            try:
                return np.asarray(self._backend.reconstruct(wanted), dtype=np.float32)
            except NotImplementedError as exc:
                raise GalleryError(str(exc)) from None

    def group_totals(self, group_by: str, cameras: Any = None) -> tuple[int, int]:
        """``(groups, items)`` among the items of ``cameras`` (see :meth:`MetadataStore.group_totals`)."""
        with self._lock.read():
            return self._store.group_totals(check_group_by(group_by), as_cameras(cameras))

    def group_counts(self, group_by: str, keys: Any, cameras: Any = None) -> dict[Any, int]:
        """Items per group key among the items of ``cameras``: ``person_label`` keys for ``person``,
        ``(camera, track_id)`` tuples for ``camera_track``."""
        with self._lock.read():
            return self._store.group_counts(check_group_by(group_by), list(keys), as_cameras(cameras))

    def ids(self) -> np.ndarray:
        """Every id in the gallery, sorted (int64)."""
        with self._lock.read():
            return self._store.ids().copy()

    def find_sources(self, sources: Any) -> dict[str, int]:
        """``{source: id}`` for those of ``sources`` already in the gallery.

        Lets a batch indexing job resume: skip every path this returns.
        """
        if isinstance(sources, str):
            raise GalleryError("sources must be a list of strings, not one string")
        with self._lock.read():
            return self._store.find_sources(sources)

    def __contains__(self, item_id: object) -> bool:
        if isinstance(item_id, bool) or not isinstance(item_id, numbers.Integral):
            return False
        with self._lock.read():
            return bool(self._store.get([int(item_id)]))

    def stats(self) -> dict[str, Any]:
        """Counts and configuration, JSON-able (what ``GET /gallery/stats`` shows)."""
        with self._lock.read():
            return {
                "count": len(self._backend), "dim": self.dim, "kind": self.kind, "fingerprint": self._fingerprint,
                "family": self._family, "mixed_precision": self._mixed_precision,
                "options": self._backend.options,
                "runtime": {k: v for k, v in self._runtime.items()},
                "next_id": self._next_id, "cameras": self._store.camera_counts(),
                "labelled": self._store.labelled_count(), "created": self._created, "saved": self._saved,
                "directory": str(self._directory) if self._directory else None,
                **self._backend.stats(),
            }

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path, *, replace: bool = False) -> Path:
        """Atomically write the gallery to ``directory`` (see :mod:`index.persist`).

        Searches keep running during a save; adds and removes wait for it. Saving to the gallery's own
        directory (or, for a gallery that has none, adopting ``directory``) takes and keeps the
        directory's write lock; saving anywhere else writes a copy (which records this gallery as its
        origin) and leaves this gallery where it was. A Milvus gallery's save flushes the collection and
        writes only the manifest that points at it, to ``directory``, which becomes its directory.

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
        own = self._directory is None or _same_dir(directory, self._directory)
        if own and self._read_only:
            raise ReadOnlyGalleryError(f"gallery {directory} was opened read-only; save a copy elsewhere instead")
        started = time.perf_counter()
        if self._backend.commits_itself:
            return self._save_pointer(directory, started)
        with self._writer:
            if own:
                self._directory = directory
                if not replace:
                    self.claim()
            with self._lock.read():
                manifest = {
                    "format": persist.FORMAT, "format_version": persist.FORMAT_VERSION, "kind": self.kind,
                    "dim": self.dim, "fingerprint": self._fingerprint, "family": self._family,
                    "options": self._backend.options, "created": self._created, "count": len(self._backend),
                    "next_id": self._next_id, "notes": dict(self._notes),
                    "faiss_version": faiss.__version__, "uid": self._uid,
                    "origin": self._origin if own else {"uid": self._uid, "sequence": self._sequence or 0,
                                                         "directory": str(self._directory)},
                }

                def write(tmp: Path) -> dict[str, Any]:
                    state = self._backend.serialize(tmp / persist.INDEX_FILE)
                    self._store.save(tmp / persist.METADATA_FILE)
                    return {"backend_state": state}

                _, written = persist.save_directory(
                    directory, write, manifest, lock=self._owner if own and not replace else None,
                    expect_sequence=self._sequence if own else None, replace=replace)
            if own:
                self._sequence, self._saved, self._unsaved = int(written["sequence"]), written["saved"], 0
        log.info("saved %d items to %s (save %d) in %.2f s", manifest["count"], directory, written["sequence"],
                 time.perf_counter() - started)
        return directory

    def _save_pointer(self, directory: Path, started: float) -> Path:
        """The save of a backend that commits each change itself: its data is in the store already."""
        with self._writer, self._lock.read():
            fields = {"kind": self.kind, "dim": self.dim, "fingerprint": self._fingerprint, "family": self._family,
                      "options": self._backend.options, "created": self._created, "count": len(self._backend),
                      "next_id": self._next_id, "notes": dict(self._notes)}
            written = self._backend.write_manifest(directory, fields)
        self._directory, self._saved = directory, written["saved"]
        log.info("saved %s gallery manifest (%d items) to %s in %.2f s", self._backend.name, fields["count"],
                 directory, time.perf_counter() - started)
        return directory

    def drop_collection(self) -> None:
        """Delete a Milvus gallery's collection and all its data (irreversible; saved manifests then fail to load).

        Raises:
            GalleryError: a FAISS gallery, whose data is its directory's.
        """
        with self._writer, self._lock.write():
            self._backend.drop()


__all__ = ["CorruptGalleryError", "Gallery"]
