"""A Milvus gallery on disk: its directory holds only a manifest that points at the collection.

Reached through ``Gallery.create(dim, kind, fingerprint, backend="milvus", uri=...)`` (which calls
:func:`create_storage`, by way of :func:`index.registry.create_storage`) and ``Gallery.load(directory)``
of a directory saved from one (:func:`read_saved`, by way of :func:`index.loading.read_gallery`); the
gallery itself is the one :class:`index.Gallery`, over a :class:`~index.milvus_backend.MilvusBackend`.

What differs from a FAISS gallery, and why:

* Durability. Milvus persists every insert and delete itself (write-ahead log, then sealed segments),
  so a gallery's data lives at ``uri``, not in its directory. ``save(directory)`` flushes the collection
  and writes ``manifest.json`` (kind, dim, fingerprint, options, uri, collection name, count, next id)
  atomically (:func:`index.persist.save_manifest`); that manifest is a pointer, and ``load`` checks it
  exactly as for FAISS (fingerprint, dim: :func:`index.loading.check_model`) plus against the
  collection's own recorded fingerprint and dimension. Items added or removed after the last save are
  therefore kept, not rolled back; the count in the manifest is informational.
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

from index import persist
from index.backends import Storage
from index.errors import GalleryError
from index.loading import LoadedGallery
from index.milvus_backend import (RUNTIME_OPTIONS, SEARCH_PARAMS, MilvusBackend, check_uri, is_lite_uri,
                                  resolve_options)

log = logging.getLogger(__name__)

BACKEND_NAME = MilvusBackend.name


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
    return Storage(backend, backend, _shown(runtime))


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
    return LoadedGallery(manifest, backend, backend, _shown(runtime), checksummed=False, next_id=next_id)


def save(directory: Path, backend: MilvusBackend, fields: dict[str, Any]) -> dict[str, Any]:
    """Flush the collection and atomically write the manifest that points at it.

    The ``uri`` is written relative to ``directory`` when a Milvus Lite file lies inside it, so the
    directory can be moved whole.

    Args:
        directory: the gallery directory.
        backend: the gallery's backend.
        fields: the gallery's own manifest fields (kind, dim, fingerprint, family, options, created,
            count, next id).

    Returns:
        The manifest written.

    Raises:
        GalleryError: ``directory`` holds a FAISS gallery or unrelated files, or is not a directory.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory") from None
    backend.flush()
    manifest = {"format": persist.FORMAT, "format_version": persist.FORMAT_VERSION, "backend": BACKEND_NAME,
                **fields, "uri": _portable_uri(directory, backend.uri), "data_dir": None, "sizes": {}}
    return persist.save_manifest(directory, manifest, check_target=lambda d: _check_target(d, backend.uri))


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
        raise GalleryError(f"{directory / persist.MANIFEST} is a milvus gallery manifest without a 'uri'")
    if is_lite_uri(uri) and not os.path.isabs(uri):
        return str(directory / uri)
    return uri


def _check_target(directory: Path, uri: str) -> None:
    """Refuse to overwrite a FAISS gallery or a directory of unrelated files."""
    manifest_path = directory / persist.MANIFEST
    if manifest_path.exists():
        previous = persist.read_manifest(directory)
        if previous.get("backend", "faiss") != BACKEND_NAME:
            raise GalleryError(f"cannot save a milvus gallery to {directory}: it holds a "
                               f"{previous.get('backend', 'faiss')} gallery; use a new or empty directory")
        return
    lite_dir = Path(uri).resolve() if is_lite_uri(uri) else None
    foreign = sorted(p.name for p in directory.iterdir()
                     if p.name not in (persist.MANIFEST, ".lock") and not p.name.startswith("." + persist.MANIFEST)
                     and p.resolve() != lite_dir)
    if foreign:
        raise GalleryError(f"cannot save a gallery to {directory}: it is not empty and not a gallery "
                           f"(holds {', '.join(foreign[:5])}); use a new or empty directory")
