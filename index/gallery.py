"""``Gallery``: the descriptor store the server searches (public API, see the README).

A gallery is a vector backend plus a metadata store, picked by :mod:`index.registry`: a FAISS index
(the default; the registry lists the kinds) with a SQLite table beside it, or a Milvus collection that
holds both (:mod:`index.milvus_backend`). Its :class:`~index.storage.Storage` keeps the two in step and
makes changes durable, under one readers-writer lock, with stable int64 ids that the gallery assigns and
never reuses, and an atomic, checksummed on-disk format (:mod:`index.persist`; a Milvus gallery's
directory holds only a manifest pointing at its collection, :mod:`index.milvus_persist`).

This file builds and changes a gallery; its other jobs are mixins, each in its own module: the
directory's write lock (:mod:`index.ownership`), transactions and idempotent adds (:mod:`index.journal`),
searches and look-ups (:mod:`index.queries`) and saves (:mod:`index.saving`).

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

import logging
import numbers
import threading
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import CorruptGalleryError, GalleryError, ReadOnlyGalleryError, UnknownIdsError
from index.journal import AddRecord, RemoveRecord, Transactions
from index.loading import check_model, read_gallery
from index.locking import DirectoryLock, ReadWriteLock, acquire_directory, read_holder
from index.manifest import legacy_uid, read_manifest
from index.ownership import DirectoryOwnership
from index.persist import retry_if_swapped, utc_now
from index.queries import Queries
from index.registry import check_backend, create_storage
from index.rows import validate_metadata
from index.saving import Saving
from index.storage import Storage
from index.validate import as_ids, as_k, normalized

log = logging.getLogger(__name__)


class Gallery(DirectoryOwnership, Transactions, Queries, Saving):
    """A searchable, persistent set of descriptors with per-item metadata.

    Build one with :meth:`create` or :meth:`load`, not the constructor.
    """

    def __init__(self, *, storage: Storage, fingerprint: str | None, next_id: int, created: str,
                 saved: str | None = None, directory: Path | None = None, read_only: bool = False,
                 sequence: int | None = None, uid: str | None = None,
                 origin: dict[str, Any] | None = None, family: str | None = None,
                 notes: dict[str, str] | None = None) -> None:
        self._storage = storage
        self._backend = storage.backend  # the vector store and the metadata store, kept in step by the storage
        self._store = storage.store
        self._fingerprint = fingerprint
        self._family = family or fingerprint  # the fp32 model of the indexing model (see index.loading)
        self._mixed_precision = False  # opened by another member of the family (fp32 <-> INT8)
        self._runtime = storage.runtime
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
        self._journal: list[AddRecord | RemoveRecord] | None = None  # an open transaction's undo records
        self._unsaved = 0  # changes since the last save to `directory` that wait for a save
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
        gallery = cls(storage=storage, fingerprint=fingerprint, next_id=0, created=utc_now(), family=family)
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
        saved_backend = read_manifest(directory).get("backend", "faiss")
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

            loaded = retry_if_swapped(directory, read, attempts=1 if claim else 3)
        except BaseException:
            if owner is not None:
                owner.release()
            raise
        manifest = loaded.manifest
        gallery = cls(storage=loaded.storage, fingerprint=manifest.get("fingerprint"),
                      next_id=loaded.next_id, created=manifest.get("created", ""),
                      saved=manifest.get("saved"), directory=directory, read_only=read_only,
                      sequence=int(manifest.get("sequence", 0)), uid=manifest.get("uid") or legacy_uid(manifest),
                      origin=manifest.get("origin"), family=manifest.get("family"),
                      notes=manifest.get("notes"))
        if mixed[0]:
            gallery._mixed_precision = True
            log.warning("gallery %s was indexed with model %s and is opened with model %s, another precision of the "
                        "same fp32 model (family %s): scores mix precisions (`python -m export verify --reference` "
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
        if idempotency_key is not None:
            self._storage.check_key(idempotency_key)
        with self._writer, self._lock.write():
            if idempotency_key is not None:
                replay = self._replay(idempotency_key, request_digest)
                if replay is not None:
                    return replay
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            if len(x) == 0:
                return ids
            pending = self._storage.add(x, ids, rows, idempotency_key, request_digest, self._journal)
            self._next_id += len(x)
            self._unsaved += pending
        return ids

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
                self._unsaved += self._storage.remove(found, self._journal)
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

    def stats(self) -> dict[str, Any]:
        """Counts and configuration, JSON-able (what ``GET /gallery/stats`` shows)."""
        with self._lock.read():
            return {
                "count": len(self._backend), "dim": self.dim, "kind": self.kind, "fingerprint": self._fingerprint,
                "family": self._family, "mixed_precision": self._mixed_precision,
                "options": self._backend.options,
                "runtime": dict(self._runtime.items()),
                "next_id": self._next_id, "cameras": self._store.camera_counts(),
                "labelled": self._store.labelled_count(), "created": self._created, "saved": self._saved,
                "directory": str(self._directory) if self._directory else None,
                **self._backend.stats(),
            }

    def drop_collection(self) -> None:
        """Delete a Milvus gallery's collection and all its data (irreversible; saved manifests then fail to load).

        Raises:
            GalleryError: a FAISS gallery, whose data is its directory's.
        """
        with self._writer, self._lock.write():
            self._backend.drop()


__all__ = ["CorruptGalleryError", "Gallery"]
