"""``Gallery`` over Milvus: the same public API, with vectors and metadata in a Milvus collection.

Reached through ``Gallery.create(dim, kind, fingerprint, backend="milvus", uri=...)`` and through
``Gallery.load(directory)`` of a directory saved from one; callers never name this class.

What differs from a FAISS gallery, and why:

* Durability. Milvus persists every insert and delete itself (write-ahead log, then sealed segments),
  so a gallery's data lives at ``uri``, not in its directory. ``save(directory)`` flushes the collection
  and writes ``manifest.json`` (kind, dim, fingerprint, options, uri, collection name, count, next id)
  atomically; that manifest is a pointer, and ``load`` checks it exactly as for FAISS (fingerprint, dim)
  plus against the collection's own recorded fingerprint and dimension. Items added or removed after
  the last save are therefore kept, not rolled back; the count in the manifest is informational.
* Filters. Cameras and time windows become one Milvus boolean expression evaluated inside the
  search (``camera in [1, 2] and timestamp >= 1.7e9 and timestamp <= 1.8e9``), instead of an id list.
* Ids are still assigned here (increasing, never reused); the next free id is also recorded in the
  collection before each insert, so a writer that crashed between insert and save hands out no id twice.
* One writer at a time per collection (as for FAISS); any number of reader processes may open it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from index import persist
from index.errors import GalleryError, UnknownIdsError
from index.gallery import Gallery
from index.metadata import validate_metadata
from index.milvus_backend import (RUNTIME_OPTIONS, SEARCH_PARAMS, MilvusBackend, check_uri, is_lite_uri,
                                  resolve_options)
from index.validate import as_cameras, as_ids, as_k, as_time_range, normalized

log = logging.getLogger(__name__)

BACKEND_NAME = "milvus"


def filter_expression(cameras: np.ndarray | None, window: tuple[float | None, float | None] | None) -> str:
    """The Milvus boolean expression for a camera set and an inclusive time window ("" for no filter).

    A window, even an open one, only matches items that have a timestamp (as for FAISS galleries):
    comparisons with a NULL field are false in Milvus, and ``(None, None)`` becomes ``is not null``.
    """
    clauses = []
    if cameras is not None:
        clauses.append(f"camera in [{', '.join(str(int(c)) for c in cameras)}]")
    if window is not None:
        lo, hi = window
        if lo is not None:
            clauses.append(f"timestamp >= {float(lo)!r}")
        if hi is not None:
            clauses.append(f"timestamp <= {float(hi)!r}")
        if lo is None and hi is None:
            clauses.append("timestamp is not null")
    return " and ".join(clauses)


def _split_runtime(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    runtime = {k: options[k] for k in RUNTIME_OPTIONS if k in options}
    return {k: v for k, v in options.items() if k not in RUNTIME_OPTIONS}, runtime


def _shown(runtime: dict[str, Any]) -> dict[str, Any]:
    # The gallery's runtime options appear in stats() (and GET /gallery/stats): never the token.
    return {k: v for k, v in runtime.items() if k != "token"}


class MilvusGallery(Gallery):
    """A :class:`Gallery` whose vectors and metadata live in a Milvus collection (see the module docstring)."""

    # ----------------------------------------------------------------- construction
    @classmethod
    def create_new(cls, dim: int, kind: str, fingerprint: str | None, *, uri: Any,
                   **options: Any) -> MilvusGallery:
        """Create the collection and return an empty gallery over it (``Gallery.create`` calls this)."""
        if uri is None:
            raise GalleryError("backend='milvus' needs uri=: a Milvus Lite file such as 'gallery/milvus.db', or a "
                               "server address such as 'http://host:19530'")
        uri = check_uri(uri)
        options, runtime = _split_runtime(options)
        resolved = resolve_options(kind, dim, options)
        backend = MilvusBackend.create(uri, kind, dim, fingerprint, resolved, runtime)
        return cls(backend=backend, store=backend, fingerprint=fingerprint, runtime=_shown(runtime), next_id=0,
                   created=persist.utc_now())

    @classmethod
    def open_saved(cls, directory: Path, manifest: dict[str, Any], *, fingerprint: str | None, dim: int | None,
                   kind: str | None, uri: Any, **options: Any) -> MilvusGallery:
        """Reopen a saved milvus gallery (``Gallery.load`` calls this after reading the manifest)."""
        saved_kind, saved_dim, saved_fp = manifest["kind"], int(manifest["dim"]), manifest.get("fingerprint")
        if dim is not None and dim != saved_dim:
            raise GalleryError(f"gallery {directory} holds {saved_dim}-d descriptors but the model produces "
                               f"{dim}-d ones; re-index the gallery with this model")
        if fingerprint is not None and fingerprint != saved_fp:
            raise GalleryError(f"gallery {directory} was built with model fingerprint {saved_fp!r}, but this "
                               f"model's fingerprint is {fingerprint!r}; re-index the gallery with this model")
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
        return cls(backend=backend, store=backend, fingerprint=saved_fp, runtime=_shown(runtime), next_id=next_id,
                   created=manifest.get("created", ""), saved=manifest.get("saved"), directory=directory,
                   notes=manifest.get("notes"))

    # ----------------------------------------------------------------- mutation
    def add(self, vectors: Any, metadata: Any, *, idempotency_key: str | None = None,
            request_digest: str = "") -> np.ndarray:
        """As :meth:`Gallery.add`; vectors and metadata go into Milvus in the same rows.

        Idempotency keys are not supported: Milvus commits each insert itself, outside the gallery's save.
        """
        if idempotency_key is not None:
            raise GalleryError("milvus galleries do not record idempotency keys (Milvus commits each insert "
                               "itself); send the add without one")
        x = normalized(vectors, self.dim, "vectors")
        rows = validate_metadata(metadata, len(x))
        with self._lock.write():
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            if len(x):
                self._backend.add_with_ids(x, ids, rows)
                self._next_id += len(x)
        return ids

    def remove(self, ids: Any, *, missing: str = "error") -> int:
        """As :meth:`Gallery.remove`."""
        if missing not in ("error", "ignore"):
            raise GalleryError(f"missing must be 'error' or 'ignore', got {missing!r}")
        wanted = np.unique(as_ids(ids))
        with self._lock.write():
            present = self._backend.present(wanted)
            if missing == "error" and not present.all():
                raise UnknownIdsError(wanted[~present].tolist())
            found = wanted[present]
            if found.size:
                self._backend.remove_ids(found)
        return int(found.size)

    # ----------------------------------------------------------------- queries
    def search(self, queries: Any, k: int, cameras: Any = None, *,
               time_range: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Gallery.search`; the camera/time filter is a Milvus expression applied inside the search."""
        q = normalized(queries, self.dim, "queries", allow_1d=True)
        k = as_k(k)
        cams = as_cameras(cameras)
        if cams is not None and cams.size == 0:
            return np.full((len(q), k), -np.inf, dtype=np.float32), np.full((len(q), k), -1, dtype=np.int64)
        expr = filter_expression(cams, as_time_range(time_range))
        with self._lock.read():
            return self._backend.search(q, k, expr=expr)

    def stats(self) -> dict[str, Any]:
        """As :meth:`Gallery.stats`, plus the Milvus uri, collection and index type."""
        return {**super().stats(), "backend": BACKEND_NAME}

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        """Flush the collection and atomically write the gallery's ``manifest.json`` in ``directory``.

        The manifest points at the collection (``uri`` relative to ``directory`` when a Milvus Lite file
        lies inside it, so the directory can be moved whole).
        """
        directory = Path(directory)
        started = time.perf_counter()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise GalleryError(f"cannot save a gallery to {directory}: it exists and is not a directory") from None
        with self._lock.read():
            self._backend.flush()
            backend: MilvusBackend = self._backend
            manifest = {
                "format": persist.FORMAT, "format_version": persist.FORMAT_VERSION, "backend": BACKEND_NAME,
                "kind": self.kind, "dim": self.dim, "fingerprint": self._fingerprint, "options": backend.options,
                "uri": _portable_uri(directory, backend.uri), "created": self._created, "count": len(backend),
                "next_id": self._next_id, "data_dir": None, "sizes": {}, "saved": persist.utc_now(),
                "notes": dict(self._notes),
            }
            with persist._save_lock(directory):  # noqa: SLF001 - same package: one saver at a time
                _check_target(directory, backend.uri)
                persist._replace_json(directory / persist.MANIFEST, manifest)  # noqa: SLF001 - atomic replace
        self._directory, self._saved = directory, manifest["saved"]
        log.info("saved milvus gallery manifest (%d items) to %s in %.2f s", manifest["count"], directory,
                 time.perf_counter() - started)
        return directory

    def drop_collection(self) -> None:
        """Delete the Milvus collection and all its data (irreversible; saved manifests then fail to load)."""
        with self._lock.write():
            self._backend.drop()

    def close(self) -> None:
        """Close the connection to Milvus (the gallery cannot be used afterwards)."""
        self._backend.close()


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
                     if p.name not in (persist.MANIFEST, ".lock") and not p.name.startswith(".manifest.json")
                     and p.resolve() != lite_dir)
    if foreign:
        raise GalleryError(f"cannot save a gallery to {directory}: it is not empty and not a gallery "
                           f"(holds {', '.join(foreign[:5])}); use a new or empty directory")
