"""Reading a saved gallery, with every check that keeps a damaged one from being served.

Both backends share the model check (:func:`check_model`: descriptor size, fingerprint or family);
:func:`read_gallery` then hands a milvus manifest to :mod:`index.milvus_persist` (which checks the
collection against it) and reads a FAISS one here. A FAISS gallery's checks, in order, each failure one
line naming the file and what is wrong (:class:`CorruptGalleryError`):

1. the manifest: JSON, every value's type (:mod:`index.manifest`), ``data_dir`` inside the gallery;
2. the data files: present, the recorded sizes and sha256 checksums (streamed; galleries saved
   before checksums existed load with a warning, and their next save adds them);
3. the metadata: SQLite ``quick_check``, the table's columns, every row's types, parsed once;
4. the index: readable, the kind and dimension the manifest says, every stored vector finite and
   (where the kind keeps vectors whole) of unit length, the id map free of repeats;
5. index and metadata hold the same ids, as many as the manifest says, all below the next id.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from index.backends import SEARCH_PARAMS
from index.errors import CorruptGalleryError, GalleryError
from index.faiss_backend import resolve_options
from index.faiss_storage import FaissStorage
from index.manifest import MANIFEST
from index.metadata import MetadataStore
from index.persist import verified_data
from index.registry import KIND_ALIASES, KINDS, RUNTIME_DEFAULTS, check_kind, load_backend, split_options
from index.storage import LoadedGallery

log = logging.getLogger(__name__)

# Kind names that share one file format and can be reopened as each other (Gallery.load(kind=...)):
# ``flat_blas`` is now an alias of ``flat`` (index.registry.KIND_ALIASES).
INTERCHANGEABLE = {"flat", "flat_blas"}


def check_model(directory: Path, manifest: dict[str, Any], fingerprint: str | None, dim: int | None,
                family: str | None = None) -> bool:
    """The querying model must be the one the gallery was built with, or of its family (when the caller says).

    A *family* is one fp32 model and the INT8 models quantized from it (their ``parent_fingerprint``):
    the upgrade path of a deployment is to keep a gallery indexed in fp32 and query it with INT8 (or
    the reverse), which costs retrieval a fraction of a point (``python -m export verify --reference``
    measures it: the mixed row). Any other model's descriptors live in another space and are refused.

    Returns:
        True when the model is another member of the gallery's family (mixed precision), False when
        it is the same model (or the caller gave no fingerprint).

    Raises:
        GalleryError: another descriptor size, or a model of another family.
    """
    saved_dim, saved_fp = int(manifest["dim"]), manifest.get("fingerprint")
    if dim is not None and dim != saved_dim:
        raise GalleryError(f"gallery {directory} holds {saved_dim}-d descriptors but the model produces "
                           f"{dim}-d ones; re-index the gallery with this model")
    if fingerprint is None or fingerprint == saved_fp:
        return False
    saved_family = manifest.get("family") or saved_fp
    if family is not None and saved_family is not None and family == saved_family:
        return True
    raise GalleryError(f"gallery {directory} was built with model fingerprint {saved_fp!r}, but this "
                       f"model's fingerprint is {fingerprint!r} (and it is not an INT8 or fp32 sibling of "
                       f"that model); re-index the gallery with this model")


def read_gallery(directory: Path, manifest: dict[str, Any], kind: str | None, uri: Any,
                 options: dict[str, Any]) -> LoadedGallery:
    """Open the backend and metadata store of a saved gallery, by the backend its manifest names.

    Args:
        directory: the gallery directory.
        manifest: its validated manifest (the model already checked with :func:`check_model`).
        kind: the kind the caller expects, or None.
        uri: for a milvus gallery, the Milvus address to use instead of the saved one; None otherwise.
        options: runtime options and search-time parameters given to ``Gallery.load``.
    """
    if manifest.get("backend", "faiss") == "milvus":
        from index.milvus_persist import read_saved as read_milvus  # pymilvus stays an optional extra

        return read_milvus(directory, manifest, kind, uri, options)
    if uri is not None:
        raise GalleryError(f"uri= is for milvus galleries; {directory} is a FAISS gallery")
    return read_saved(directory, manifest, kind, options)


def read_saved(directory: Path, manifest: dict[str, Any], kind: str | None, options: dict[str, Any]) -> LoadedGallery:
    """Read and check the version ``manifest`` names (see the module docstring).

    Args:
        directory: the gallery directory.
        manifest: its validated manifest.
        kind: reopen as this kind, or None for the saved kind (``flat_blas``, a removed kind, names ``flat``).
        options: runtime options and search-time parameters given to ``Gallery.load``.
    """
    manifest_path = Path(directory) / MANIFEST
    saved_kind = manifest["kind"]
    if saved_kind not in KINDS and saved_kind not in KIND_ALIASES:
        raise CorruptGalleryError(manifest_path, f"field 'kind' is {saved_kind!r}; valid kinds: "
                                                 f"{', '.join(KINDS)}")
    if saved_kind in KIND_ALIASES:
        log.warning("gallery %s was saved with kind %r, which no longer exists; opening it as %r (the same file "
                    "format, the same exact results); its next save records %r", directory, saved_kind,
                    KIND_ALIASES[saved_kind], KIND_ALIASES[saved_kind])
    saved_kind = KIND_ALIASES.get(saved_kind, saved_kind)
    if kind is not None:
        asked = KIND_ALIASES[kind] if kind in KIND_ALIASES else check_kind(kind)
        if asked != saved_kind and not {asked, saved_kind} <= INTERCHANGEABLE:
            raise GalleryError(f"gallery {directory} is a {saved_kind!r} index; it can only be reopened as "
                               f"another kind between {sorted(INTERCHANGEABLE)}")
    kind = saved_kind  # the interchangeable names are one kind now
    search_params = {k: v for k, v in options.items() if k in SEARCH_PARAMS}
    bad = set(options) - set(RUNTIME_DEFAULTS) - SEARCH_PARAMS
    if bad:
        raise GalleryError(f"option(s) {sorted(bad)} cannot be given to load(); valid: "
                           f"{', '.join(sorted(set(RUNTIME_DEFAULTS) | SEARCH_PARAMS))}")
    _, runtime = split_options(kind, {k: v for k, v in options.items() if k in RUNTIME_DEFAULTS})
    saved_options = manifest["options"]
    try:
        resolve_options(saved_kind, saved_options)
    except GalleryError as exc:
        raise CorruptGalleryError(manifest_path, f"field 'options' is invalid: {exc}") from None
    started = time.perf_counter()
    (index_path, db_path), checksummed = verified_data(directory, manifest)
    if not checksummed:
        log.warning("gallery %s has no checksums (saved by an older version): its files were checked for size "
                    "only; `python -m serving gallery repair %s` or its next save adds them", directory, directory)
    store = MetadataStore.load(db_path)
    backend = load_backend(kind, index_path, int(manifest["dim"]), saved_options, manifest.get("backend_state", {}),
                           runtime)
    backend.check_vectors(index_path)
    if search_params:
        backend.set_search_params(**search_params)
    check_consistent(directory, manifest, backend.ids(), store.ids())
    log.info("loaded %s gallery %s: %d items in %.2f s (%s)", kind, directory, len(backend),
             time.perf_counter() - started, "checksums verified" if checksummed else "no checksums")
    return LoadedGallery(manifest, FaissStorage(backend, store, runtime), checksummed, int(manifest["next_id"]))


def check_consistent(directory: Path, manifest: dict[str, Any], index_ids: np.ndarray, store_ids: np.ndarray) -> None:
    """The index and the metadata must hold the same ids, as many as the manifest says."""
    if not np.array_equal(index_ids, store_ids):
        only_index = np.setdiff1d(index_ids, store_ids)
        only_store = np.setdiff1d(store_ids, index_ids)
        raise CorruptGalleryError(
            directory, f"the gallery is inconsistent: the index holds {len(index_ids)} ids and the metadata "
                       f"{len(store_ids)}; {len(only_index)} only in the index (e.g. {only_index[:5].tolist()}), "
                       f"{len(only_store)} only in the metadata (e.g. {only_store[:5].tolist()})")
    if int(manifest["count"]) != len(index_ids):
        raise CorruptGalleryError(directory, f"the gallery is inconsistent: the manifest says {manifest['count']} "
                                             f"items, the index and metadata hold {len(index_ids)}")
    if len(index_ids) and int(manifest["next_id"]) <= int(index_ids[-1]):
        raise CorruptGalleryError(directory, f"the gallery is inconsistent: next id {manifest['next_id']} is not "
                                             f"above the largest stored id {int(index_ids[-1])}")
