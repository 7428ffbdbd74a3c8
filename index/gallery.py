"""``Gallery``: the descriptor store the server searches (public API, see the README).

A gallery is a vector backend (FAISS by default, :mod:`index.registry` lists the kinds) plus a
SQLite metadata table, kept in step under one readers-writer lock, with stable int64 ids that the
gallery assigns and never reuses, and an atomic on-disk format (:mod:`index.persist`).

Conventions callers rely on:

* Scores are cosine similarities (inner products of L2-normalised vectors, normalised here and
  nowhere else in the serving path), higher is more similar, best first.
* Where fewer than ``k`` results exist, rows end with id ``-1`` and score ``-inf`` (not NaN: ``-inf``
  sorts last and compares cleanly).
* Thread safety: any number of concurrent ``search``/``get``/``stats``/``save`` calls, or one
  ``add``/``remove``/``train`` at a time (writers are preferred; see :mod:`index.locking`).
"""

from __future__ import annotations

import logging
import numbers
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import persist
from index.errors import GalleryError, UnknownIdsError
from index.faiss_backend import SEARCH_PARAMS
from index.locking import ReadWriteLock
from index.metadata import MetadataStore, validate_metadata
from index.registry import (RUNTIME_DEFAULTS, check_backend, check_kind, create_backend, load_backend,
                            split_options)
from index.validate import as_cameras, as_ids, as_k, as_time_range, normalized

log = logging.getLogger(__name__)

# Kinds that share one file format and can be reopened as each other (Gallery.load(kind=...)).
_INTERCHANGEABLE = {"flat", "flat_blas"}


class Gallery:
    """A searchable, persistent set of descriptors with per-item metadata.

    Build one with :meth:`create` or :meth:`load`, not the constructor.
    """

    def __init__(self, *, backend: Any, store: MetadataStore, fingerprint: str | None, runtime: dict[str, Any],
                 next_id: int, created: str, saved: str | None = None, directory: Path | None = None) -> None:
        self._backend = backend
        self._store = store
        self._fingerprint = fingerprint
        self._runtime = runtime
        self._next_id = next_id
        self._created = created
        self._saved = saved
        self._directory = directory
        self._lock = ReadWriteLock()

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, dim: int, kind: str = "flat", fingerprint: str | None = None, *, backend: str = "faiss",
               uri: Any = None, **options: Any) -> Gallery:
        """An empty gallery.

        Args:
            dim: descriptor size (1536 for the paper's 6x256 model).
            kind: ``flat`` (exact, default), ``flat_fp16``, ``flat_blas`` (exact, fastest on CPU at
                batch > 1), ``ivf_flat``, ``ivf_pq`` or ``hnsw``.
            fingerprint: the model fingerprint (sha256 of the ONNX file); loading checks it.
            **options: kind options (``nlist``, ``nprobe``, ``train_size`` for IVF; ``m``, ``nbits`` for
                IVF-PQ; ``hnsw_m``, ``ef_construction``, ``ef_search`` for HNSW) and runtime options
                (``device``: auto/cpu/gpu, ``gpu_fp16``, ``filter_mode``: auto/selector/wider).
            backend: ``"faiss"`` (in-process, default) or ``"milvus"`` (a Milvus collection: kinds ``flat``,
                ``ivf_flat``, ``ivf_pq``, ``hnsw``; see :mod:`index.milvus_gallery`).
            uri: for ``backend="milvus"``: a Milvus Lite file (``"gallery/milvus.db"``) or a server address
                (``"http://host:19530"``).
        """
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise GalleryError(f"dim must be a positive int, got {dim!r}")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise GalleryError(f"fingerprint must be a str or None, got {type(fingerprint).__name__}")
        if check_backend(backend) == "milvus":
            from index.milvus_gallery import MilvusGallery
            return MilvusGallery.create_new(int(dim), kind, fingerprint, uri=uri, **options)
        if uri is not None:
            raise GalleryError("uri= is for backend='milvus'; a FAISS gallery lives in memory until save(directory)")
        kind = check_kind(kind)
        backend_options, runtime = split_options(kind, options)
        backend = create_backend(kind, int(dim), backend_options, runtime)
        return cls(backend=backend, store=MetadataStore.in_memory(), fingerprint=fingerprint, runtime=runtime,
                   next_id=0, created=persist.utc_now())

    @classmethod
    def load(cls, directory: str | Path, fingerprint: str | None = None, *, dim: int | None = None,
             kind: str | None = None, backend: str | None = None, uri: Any = None, **options: Any) -> Gallery:
        """Open a saved gallery, checking it against the model that will query it.

        Args:
            directory: a directory written by :meth:`save`.
            fingerprint: the querying model's fingerprint; must equal the one saved (when given).
            dim: the querying model's descriptor size; must equal the saved one (when given).
            kind: reopen a ``flat`` gallery as ``flat_blas`` or the reverse (same file format).
            **options: runtime options (``device``, ``gpu_fp16``, ``filter_mode``) and search-time
                parameters (``nprobe``, ``ef_search``); build options cannot change after creation.
            backend: when given, the backend the gallery must have (``"faiss"`` or ``"milvus"``); the
                manifest says which it is.
            uri: for a milvus gallery, the Milvus address to use instead of the saved one (the server moved).

        Raises:
            GalleryError: not a gallery, fingerprint or dim mismatch, or the index and the metadata
                disagree (different ids or counts).
        """
        directory = Path(directory)
        saved_backend = persist.read_manifest(directory).get("backend", "faiss")
        if backend is not None and check_backend(backend) != saved_backend:
            raise GalleryError(f"gallery {directory} is a {saved_backend} gallery, not a {backend} one")
        if check_backend(saved_backend) == "milvus":
            from index.milvus_gallery import MilvusGallery
            return MilvusGallery.open_saved(directory, persist.read_manifest(directory), fingerprint=fingerprint,
                                            dim=dim, kind=kind, uri=uri, **options)
        if uri is not None:
            raise GalleryError(f"uri= is for milvus galleries; {directory} is a FAISS gallery")
        manifest, (index_path, db_path) = persist.wait_for_data(directory)
        saved_kind = check_kind(manifest["kind"])
        saved_dim = int(manifest["dim"])
        saved_fp = manifest.get("fingerprint")
        if dim is not None and dim != saved_dim:
            raise GalleryError(f"gallery {directory} holds {saved_dim}-d descriptors but the model produces "
                               f"{dim}-d ones; re-index the gallery with this model")
        if fingerprint is not None and fingerprint != saved_fp:
            raise GalleryError(f"gallery {directory} was built with model fingerprint {saved_fp!r}, but this "
                               f"model's fingerprint is {fingerprint!r}; re-index the gallery with this model")
        kind = saved_kind if kind is None else check_kind(kind)
        if kind != saved_kind and not {kind, saved_kind} <= _INTERCHANGEABLE:
            raise GalleryError(f"gallery {directory} is a {saved_kind!r} index; it can only be reopened as "
                               f"another kind between {sorted(_INTERCHANGEABLE)}")
        search_params = {k: v for k, v in options.items() if k in SEARCH_PARAMS}
        bad = set(options) - set(RUNTIME_DEFAULTS) - SEARCH_PARAMS
        if bad:
            raise GalleryError(f"option(s) {sorted(bad)} cannot be given to load(); valid: "
                               f"{', '.join(sorted(set(RUNTIME_DEFAULTS) | SEARCH_PARAMS))}")
        _, runtime = split_options(kind, {k: v for k, v in options.items() if k in RUNTIME_DEFAULTS})
        saved_options = manifest["options"] if kind == saved_kind else {}
        started = time.perf_counter()
        store = MetadataStore.load(db_path)
        backend = load_backend(kind, index_path, saved_dim, saved_options, manifest.get("backend_state", {}), runtime)
        if search_params:
            backend.set_search_params(**search_params)
        _check_consistent(directory, manifest, backend.ids(), store.ids())
        log.info("loaded %s gallery %s: %d items in %.2f s", kind, directory, len(backend),
                 time.perf_counter() - started)
        return cls(backend=backend, store=store, fingerprint=saved_fp, runtime=runtime,
                   next_id=int(manifest["next_id"]), created=manifest.get("created", ""),
                   saved=manifest.get("saved"), directory=directory)

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
    def device(self) -> str:
        return self._backend.device

    def __len__(self) -> int:
        with self._lock.read():
            return len(self._backend)

    def __repr__(self) -> str:
        return f"Gallery(kind={self.kind!r}, dim={self.dim}, count={len(self)}, device={self.device!r})"

    # ----------------------------------------------------------------- mutation
    def add(self, vectors: Any, metadata: Any) -> np.ndarray:
        """Add descriptors with their metadata; returns their new ids.

        Args:
            vectors: ``[N, dim]`` descriptors (any real dtype; normalised here).
            metadata: ``N`` dicts: ``camera`` (int, required), ``person_label`` (int or str),
                ``source`` (path or URI), ``timestamp`` (Unix seconds, datetime or ISO-8601; stored
                as Unix seconds), ``extra`` (JSON-able dict).

        Returns:
            int64 ``[N]`` ids, increasing, never used before in this gallery.

        Raises:
            GalleryError: wrong shape, NaN/inf/zero vectors, metadata of the wrong length or with a
                bad/missing field. Nothing is changed then.
        """
        x = normalized(vectors, self.dim, "vectors")
        rows = validate_metadata(metadata, len(x))
        with self._lock.write():
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            if len(x) == 0:
                return ids
            self._backend.add_with_ids(x, ids)
            try:
                self._store.insert(ids, rows)
            except BaseException:
                self._backend.remove_ids(ids)
                raise
            self._next_id += len(x)
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
        wanted = np.unique(as_ids(ids))
        with self._lock.write():
            present = np.isin(wanted, self._store.ids())
            if missing == "error" and not present.all():
                raise UnknownIdsError(wanted[~present].tolist())
            found = wanted[present]
            if found.size:
                self._backend.remove_ids(found)
                self._store.delete(found)
        return int(found.size)

    def train(self, vectors: Any) -> None:
        """Train an IVF gallery now on a sample of descriptors (not added); other kinds ignore it.

        Without this, IVF kinds train themselves on the gallery once it holds ``train_size`` items.
        """
        x = normalized(vectors, self.dim, "training vectors")
        with self._lock.write():
            self._backend.train(x)

    def set_search_params(self, **params: Any) -> None:
        """Change ``nprobe`` (IVF) or ``ef_search`` (HNSW) for later searches (and saves)."""
        with self._lock.write():
            self._backend.set_search_params(**params)

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
        """
        q = normalized(queries, self.dim, "queries", allow_1d=True)
        k = as_k(k)
        cams = as_cameras(cameras)
        window = as_time_range(time_range)
        with self._lock.read():
            allowed = None if cams is None and window is None else self._store.select_ids(cams, window)
            if len(self._backend) == 0 or (allowed is not None and allowed.size == 0):
                return (np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64))
            return self._backend.search(q, k, allowed, use_selector=self._runtime["filter_mode"] != "wider")

    def get(self, ids: Any, *, missing: str = "error") -> list[dict[str, Any] | None]:
        """Metadata for ``ids``, in order: dicts with ``id``, ``camera``, ``person_label``,
        ``source``, ``timestamp`` (Unix seconds or None), ``extra`` (dict).

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
                "options": self._backend.options,
                "runtime": {k: v for k, v in self._runtime.items()},
                "next_id": self._next_id, "cameras": self._store.camera_counts(),
                "labelled": self._store.labelled_count(), "created": self._created, "saved": self._saved,
                "directory": str(self._directory) if self._directory else None,
                **self._backend.stats(),
            }

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Atomically write the gallery to ``directory`` (see :mod:`index.persist`).

        Searches keep running during a save; adds and removes wait for it.

        Returns:
            The directory.
        """
        directory = Path(directory)
        started = time.perf_counter()
        with self._lock.read():
            manifest = {
                "format": persist.FORMAT, "format_version": persist.FORMAT_VERSION, "kind": self.kind,
                "dim": self.dim, "fingerprint": self._fingerprint, "options": self._backend.options,
                "created": self._created, "count": len(self._backend), "next_id": self._next_id,
                "faiss_version": faiss.__version__,
            }

            def write(tmp: Path) -> dict[str, Any]:
                state = self._backend.serialize(tmp / persist.INDEX_FILE)
                self._store.save(tmp / persist.METADATA_FILE)
                return {"backend_state": state}

            persist.save_directory(directory, write, manifest)
        self._directory, self._saved = directory, persist.utc_now()
        log.info("saved %d items to %s in %.2f s", manifest["count"], directory, time.perf_counter() - started)
        return directory


def _check_consistent(directory: Path, manifest: dict[str, Any], index_ids: np.ndarray,
                      store_ids: np.ndarray) -> None:
    """The index and the metadata must hold the same ids, as many as the manifest says."""
    if not np.array_equal(index_ids, store_ids):
        only_index = np.setdiff1d(index_ids, store_ids)
        only_store = np.setdiff1d(store_ids, index_ids)
        raise GalleryError(
            f"gallery {directory} is inconsistent: the index holds {len(index_ids)} ids and the metadata "
            f"{len(store_ids)}; {len(only_index)} only in the index (e.g. {only_index[:5].tolist()}), "
            f"{len(only_store)} only in the metadata (e.g. {only_store[:5].tolist()})")
    if int(manifest["count"]) != len(index_ids):
        raise GalleryError(f"gallery {directory} is inconsistent: the manifest says {manifest['count']} items, "
                           f"the index and metadata hold {len(index_ids)}")
    if len(index_ids) and int(manifest["next_id"]) <= int(index_ids[-1]):
        raise GalleryError(f"gallery {directory} is inconsistent: next id {manifest['next_id']} is not above the "
                           f"largest stored id {int(index_ids[-1])}")
