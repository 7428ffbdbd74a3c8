"""A Milvus gallery's storage, and its directory on disk: a manifest that points at the collection.

Reached through ``Gallery.create(dim, kind, fingerprint, backend="milvus", uri=...)`` (which calls
:func:`create_storage`, by way of :func:`index.registry.create_storage`) and ``Gallery.load(directory)``
of a directory saved from one (:func:`read_saved`, by way of :func:`index.loading.read_gallery`); the
gallery itself is the one :class:`index.Gallery`, over a :class:`MilvusStorage` of a
:class:`~index.milvus_backend.MilvusBackend`.

What differs from a FAISS gallery, and why:

* Durability. Milvus persists every insert and delete itself (write-ahead log, then sealed segments),
  so a gallery's data lives at ``uri``, not in its directory. ``save(directory)`` flushes the collection
  and writes ``manifest.json`` (kind, dim, fingerprint, options, uri, collection name, count, next id)
  atomically (:func:`index.persist.save_manifest`), under the same write lock and save sequence as a
  FAISS gallery's; that manifest is a pointer, and ``load`` checks it exactly as for FAISS (fingerprint,
  dim: :func:`index.loading.check_model`) plus against the collection's own recorded fingerprint and
  dimension. Items added or removed after the last save are therefore kept, not rolled back (there is
  nothing for a transaction to undo, and no idempotency key to record); the count in the manifest is
  informational. A copy (``save`` elsewhere) points at the same collection.
* Filters. Cameras and time windows become one Milvus boolean expression evaluated inside the
  search (``camera in [1, 2] and timestamp >= 1.7e9 and timestamp <= 1.8e9``), instead of an id list.
* Ids are still assigned by the gallery (increasing, never reused); the next free id is also recorded in
  the collection before each insert, so a writer that crashed between insert and save hands out no id twice.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import SEARCH_PARAMS
from index.errors import GalleryError
from index.locking import LOCK_FILE, DirectoryLock
from index.manifest import MANIFEST, read_manifest
from index.milvus_backend import MilvusBackend
from index.milvus_options import RUNTIME_OPTIONS, check_uri, is_lite_uri, resolve_options
from index.persist import save_manifest
from index.storage import Journal, LoadedGallery, Storage, TimeWindow

log = logging.getLogger(__name__)


class MilvusStorage(Storage):
    """A :class:`~index.milvus_backend.MilvusBackend` as vector and metadata store both; it commits every change
    itself, so no change waits for a save or is journalled (see the module docstring)."""

    backend: MilvusBackend

    def __init__(self, backend: MilvusBackend, runtime: dict[str, Any]) -> None:
        super().__init__(backend, backend, runtime)

    def check_key(self, key: str) -> None:
        name = self.backend.name
        raise GalleryError(f"{name} galleries do not record idempotency keys (the {name} store commits each "
                           f"insert itself, outside the gallery's save); send the add without one")

    def add(self, vectors: np.ndarray, ids: np.ndarray, rows: list[Any], key: str | None, digest: str,
            journal: Journal | None) -> bool:
        self.backend.add_with_ids(vectors, ids, rows)  # one write: the rows are fields of the vectors' records
        return False

    def remove(self, ids: np.ndarray, journal: Journal | None) -> bool:
        self.backend.remove_ids(ids)
        return False

    def search(self, queries: np.ndarray, k: int, cameras: np.ndarray | None,
               window: TimeWindow | None) -> tuple[np.ndarray, np.ndarray]:
        """The filter is a Milvus expression evaluated inside the search (no id list)."""
        return self.backend.search_where(queries, k, cameras, window)

    def check_target(self, directory: Path) -> None:
        """Refuse a directory holding a FAISS gallery, or files other than a gallery's and this Milvus Lite file."""
        _check_target(Path(directory), self.backend.uri)

    def write(self, directory: Path, manifest: dict[str, Any], *, lock: DirectoryLock | None,
              expect_sequence: int | None, replace: bool) -> dict[str, Any]:
        """Flush the collection and atomically write the manifest that points at it.

        The ``uri`` is written relative to ``directory`` when a Milvus Lite file lies inside it, so the
        directory can be moved whole.
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory") from None
        self.backend.flush()
        manifest = {**manifest, "backend": self.backend.name, "uri": _portable_uri(directory, self.backend.uri),
                    "data_dir": None, "sizes": {}}
        return save_manifest(directory, manifest, lock=lock, expect_sequence=expect_sequence, replace=replace,
                             check_target=self.check_target)


def _split_runtime(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    runtime = {k: options[k] for k in RUNTIME_OPTIONS if k in options}
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}, runtime


def _shown(runtime: dict[str, Any]) -> dict[str, Any]:
    # The gallery's runtime options appear in stats() (and GET /gallery/stats): never the token.
    return {k: v for k, v in runtime.items() if k != "token"}


def create_storage(dim: int, kind: str, fingerprint: str | None, uri: Any, options: dict[str, Any]) -> Storage:
    """Create the collection of a new gallery (it must not exist yet).

    Args:
        dim: descriptor size.
        kind: ``flat``, ``ivf_flat``, ``ivf_pq`` or ``hnsw``.
        fingerprint: the model fingerprint, recorded in the collection too.
        uri: a Milvus Lite file (``*.db``) or a server address.
        options: kind options (:data:`index.milvus_backend.KIND_DEFAULTS`, ``collection``, ...) and the
            runtime options ``token`` / ``timeout``.

    Returns:
        The backend, as vector store and metadata store both, and the runtime options stats may show.
    """
    if uri is None:
        raise GalleryError("backend='milvus' needs uri=: a Milvus Lite file such as 'gallery/milvus.db', or a "
                           "server address such as 'http://host:19530'")
    uri = check_uri(uri)
    options, runtime = _split_runtime(options)
    backend = MilvusBackend.create(uri, kind, dim, fingerprint, resolve_options(kind, dim, options), runtime)
    return MilvusStorage(backend, _shown(runtime))


def read_saved(directory: Path, manifest: dict[str, Any], kind: str | None, uri: Any,
               options: dict[str, Any]) -> LoadedGallery:
    """Reopen the collection a saved milvus gallery's manifest points at (the model was checked already).

    Args:
        directory: the gallery directory.
        manifest: its validated manifest.
        kind: the kind the caller expects, or None.
        uri: the Milvus address to use instead of the saved one (the server moved), or None.
        options: search-time parameters (``nprobe``, ``ef_search``) and runtime options (``token``, ``timeout``).
    """
    saved_kind, saved_dim, saved_fp = manifest["kind"], int(manifest["dim"]), manifest.get("fingerprint")
    if kind is not None and kind != saved_kind:
        raise GalleryError(f"gallery {directory} is a milvus {saved_kind!r} index; a Milvus collection's index "
                           f"type is fixed when it is created, so it cannot be reopened as {kind!r}")
    search = {k: v for k, v in options.items() if k in SEARCH_PARAMS}
    bad = set(options) - SEARCH_PARAMS - set(RUNTIME_OPTIONS)
    if bad:
        raise GalleryError(f"option(s) {sorted(bad)} cannot be given to load() of a milvus gallery; valid: "
                           f"{', '.join(sorted(SEARCH_PARAMS | set(RUNTIME_OPTIONS)))}, uri")
    runtime = {k: v for k, v in options.items() if k in RUNTIME_OPTIONS}
    uri = check_uri(uri) if uri is not None else _stored_uri(directory, manifest)
    started = time.perf_counter()
    backend = MilvusBackend.open(uri, saved_kind, saved_dim, resolve_options(saved_kind, saved_dim,
                                                                             manifest["options"]),
                                 runtime, saved_fp)
    if search:
        backend.set_search_params(**search)
    next_id = max(int(manifest["next_id"]), backend.next_id())
    count = len(backend)
    if count != int(manifest["count"]):
        log.info("milvus gallery %s: the collection holds %d items, %d at the last save (Milvus keeps changes "
                 "made after a save)", directory, count, manifest["count"])
    log.info("opened milvus %s gallery %s (%s, collection %r): %d items in %.2f s", saved_kind, directory, uri,
             backend.collection, count, time.perf_counter() - started)
    return LoadedGallery(manifest, MilvusStorage(backend, _shown(runtime)), checksummed=False, next_id=next_id)


def _portable_uri(directory: Path, uri: str) -> str:
    if not is_lite_uri(uri):
        return uri
    path = Path(uri).resolve()
    try:
        return path.relative_to(directory.resolve()).as_posix()
    except ValueError:
        return str(path)


def _stored_uri(directory: Path, manifest: dict[str, Any]) -> str:
    uri = manifest.get("uri")
    if not isinstance(uri, str):
        raise GalleryError(f"{directory / MANIFEST} is a milvus gallery manifest without a 'uri'")
    if is_lite_uri(uri) and not os.path.isabs(uri):
        return str(directory / uri)
    return uri


def _check_target(directory: Path, uri: str) -> None:
    """Refuse to overwrite a FAISS gallery or a directory of unrelated files."""
    if directory.exists() and not directory.is_dir():
        raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory")
    if not directory.is_dir():
        return
    if (directory / MANIFEST).exists():
        previous = read_manifest(directory).get("backend", "faiss")
        if previous != MilvusBackend.name:
            raise GalleryError(f"cannot save a milvus gallery to {directory}: it holds a {previous} gallery; use a "
                               f"new or empty directory")
        return
    lite_dir = Path(uri).resolve() if is_lite_uri(uri) else None
    foreign = sorted(p.name for p in directory.iterdir()
                     if p.name not in (MANIFEST, LOCK_FILE) and not p.name.startswith("." + MANIFEST)
                     and p.resolve() != lite_dir)
    if foreign:
        raise GalleryError(f"cannot save a gallery to {directory}: it is not empty and not a gallery "
                           f"(holds {', '.join(foreign[:5])}); use a new or empty directory")
