"""Backends and index kinds by name, and which options belong to the backend, the runtime or the gallery.

A flat name -> class dict (torchvision's ``register_model`` idea, without the decorator): the five
FAISS kinds are listed once here and every error that rejects a kind names them. The backend of a new
gallery, with its metadata store, is picked by :func:`create_storage` (a saved one's by
:func:`index.loading.read_gallery`): FAISS with SQLite beside it, or a Milvus collection holding both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index.backends import VectorBackend
from index.errors import GalleryError
from index.faiss_backend import DEFAULTS as FAISS_DEFAULTS
from index.faiss_backend import FaissBackend
from index.faiss_storage import FaissStorage
from index.manifest import BACKENDS
from index.metadata import MetadataStore
from index.storage import Storage

KINDS: dict[str, type] = {
    "flat": FaissBackend,
    "flat_fp16": FaissBackend,
    "ivf_flat": FaissBackend,
    "ivf_pq": FaissBackend,
    "hnsw": FaissBackend,
}
EXACT_KINDS = ("flat", "flat_fp16")
# Removed kinds that saved galleries may still name, and the kind that now reads their files.
# ``flat_blas`` (a numpy GEMM search over the same IndexIDMap2(IndexFlatIP) file as ``flat``) went when
# ``flat`` itself reached GEMM speed through FAISS's BLAS threshold (index.faiss_config).
KIND_ALIASES: dict[str, str] = {"flat_blas": "flat"}
# Options that describe this process rather than the gallery: never saved, given again at load.
RUNTIME_DEFAULTS: dict[str, Any] = {"device": "auto", "gpu_fp16": False, "filter_mode": "auto"}
FILTER_MODES = ("auto", "selector", "wider")


def check_kind(kind: Any) -> str:
    if isinstance(kind, str) and kind in KIND_ALIASES:
        raise GalleryError(f"index kind {kind!r} was removed: kind {KIND_ALIASES[kind]!r} searches as fast now "
                           f"(FAISS's BLAS path, index.faiss_config); valid kinds: {', '.join(KINDS)}")
    if kind not in KINDS:
        raise GalleryError(f"unknown index kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return kind


def check_backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise GalleryError(f"unknown gallery backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def valid_options(kind: str) -> list[str]:
    """Every option name ``Gallery.create`` accepts for ``kind``."""
    return sorted(set(FAISS_DEFAULTS.get(kind, {})) | set(RUNTIME_DEFAULTS))


def split_options(kind: str, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``**options`` into (backend options, runtime options), rejecting unknown names."""
    unknown = set(options) - set(valid_options(kind))
    if unknown:
        raise GalleryError(f"unknown option(s) {sorted(unknown)} for kind {kind!r}; valid options: "
                           f"{', '.join(valid_options(kind))}")
    runtime = dict(RUNTIME_DEFAULTS)
    runtime.update({k: v for k, v in options.items() if k in RUNTIME_DEFAULTS})
    if runtime["filter_mode"] not in FILTER_MODES:
        raise GalleryError(f"filter_mode must be one of {', '.join(FILTER_MODES)}, got {runtime['filter_mode']!r}")
    if not isinstance(runtime["gpu_fp16"], bool):
        raise GalleryError(f"gpu_fp16 must be True or False, got {runtime['gpu_fp16']!r}")
    backend = {k: v for k, v in options.items() if k not in RUNTIME_DEFAULTS}
    return backend, runtime


def create_storage(backend: str, kind: str, dim: int, fingerprint: str | None, uri: Any,
                   options: dict[str, Any]) -> Storage:
    """The storage of a new gallery: its vector backend and metadata store (:mod:`index.storage`).

    Args:
        backend: ``"faiss"`` (a FAISS index with an in-memory SQLite table beside it,
            :mod:`index.faiss_storage`) or ``"milvus"`` (one collection holding both, :mod:`index.milvus_persist`).
        kind: the index kind (:data:`KINDS` for FAISS; Milvus has its own list).
        dim: descriptor size.
        fingerprint: the model fingerprint (a Milvus collection records it too).
        uri: the Milvus address, for ``backend="milvus"`` only.
        options: ``Gallery.create``'s ``**options``.

    Raises:
        GalleryError: an unknown backend, kind or option, or ``uri`` given to FAISS.
    """
    if check_backend(backend) == "milvus":
        from index.milvus_persist import create_storage as create_milvus  # pymilvus stays an optional extra

        return create_milvus(dim, kind, fingerprint, uri, options)
    if uri is not None:
        raise GalleryError("uri= is for backend='milvus'; a FAISS gallery lives in memory until save(directory)")
    kind = check_kind(kind)
    backend_options, runtime = split_options(kind, options)
    return FaissStorage(create_backend(kind, dim, backend_options, runtime), MetadataStore.in_memory(), runtime)


def create_backend(kind: str, dim: int, options: dict[str, Any], runtime: dict[str, Any]) -> VectorBackend:
    return KINDS[kind](kind, dim, options, device=runtime["device"], gpu_fp16=runtime["gpu_fp16"])


def load_backend(kind: str, path: Path, dim: int, options: dict[str, Any], state: dict[str, Any],
                 runtime: dict[str, Any]) -> VectorBackend:
    return KINDS[kind].deserialize(path, kind, dim, options, state, device=runtime["device"],
                                   gpu_fp16=runtime["gpu_fp16"])
