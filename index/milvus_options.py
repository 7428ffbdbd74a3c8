"""The options of a Milvus gallery: its kinds, their build and search parameters, and its address.

Options are named as for the FAISS kinds (``nlist``, ``nprobe``, ``m``, ``nbits``, ``hnsw_m``,
``ef_construction``, ``ef_search``) so a configuration moves between backends; :func:`resolve_options` fills
the defaults and checks every value before a collection is created or opened (:mod:`index.milvus_backend`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from index.backends import auto_pq_m
from index.errors import GalleryError

# Gallery kind -> Milvus index type. The exact kind is a brute-force FLAT index, like FAISS's ``flat``.
MILVUS_KINDS: dict[str, str] = {"flat": "FLAT", "ivf_flat": "IVF_FLAT", "ivf_pq": "IVF_PQ", "hnsw": "HNSW"}
EXACT_MILVUS_KINDS = ("flat",)
# Build / search options per kind, named as for the FAISS kinds so a config moves between backends.
# nlist is fixed at creation (Milvus trains each sealed segment's IVF on its own rows), so the default is
# sized for the ~1M-row segments of a Milvus server rather than computed from a final gallery size.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "ivf_flat": {"nlist": 1024, "nprobe": 16},
    "ivf_pq": {"nlist": 1024, "nprobe": 16, "m": None, "nbits": 8},
    "hnsw": {"hnsw_m": 32, "ef_construction": 40, "ef_search": 64},
}
# Options of every kind, saved in the manifest. ``index_type`` / ``index_params`` / ``search_params``
# override the mapping above, e.g. index_type="GPU_CAGRA" or "DISKANN" on a Milvus server.
COMMON_DEFAULTS: dict[str, Any] = {"collection": "xmreid_gallery", "index_type": None, "index_params": None,
                                   "search_params": None, "consistency_level": "Strong", "shards": 1}
# Options that describe this process, never saved: credentials and the RPC timeout.
RUNTIME_OPTIONS = ("token", "timeout")


def is_lite_uri(uri: str) -> bool:
    """A Milvus Lite data path (``*.db``) rather than a server address."""
    return "://" not in uri and uri.endswith(".db")


def check_uri(uri: Any) -> str:
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not (is_lite_uri(uri) or uri.startswith(("http://", "https://", "tcp://",
                                                                              "unix:"))):
        raise GalleryError(f"uri must be a Milvus Lite file path ending in .db or a server address such as "
                           f"http://host:19530, got {uri!r}")
    return uri


def resolve_options(kind: str, dim: int, options: dict[str, Any]) -> dict[str, Any]:
    """Fill the defaults of ``kind`` and check every value; unknown names raise listing the valid ones."""
    if kind not in MILVUS_KINDS:
        raise GalleryError(f"unknown index kind {kind!r} for backend 'milvus'; valid kinds: {', '.join(MILVUS_KINDS)}")
    defaults = {**KIND_DEFAULTS[kind], **COMMON_DEFAULTS}
    unknown = set(options) - set(defaults)
    if unknown:
        raise GalleryError(f"unknown option(s) {sorted(unknown)} for a milvus {kind!r} gallery; valid options: "
                           f"{', '.join(sorted(set(defaults) | set(RUNTIME_OPTIONS)))}")
    out = dict(defaults)
    for name, value in options.items():
        if name in KIND_DEFAULTS[kind] or name == "shards":
            if value is None and defaults[name] is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise GalleryError(f"option {name!r} must be a positive int, got {value!r}")
            value = int(value)
        elif name in ("index_params", "search_params"):
            if value is not None and not isinstance(value, dict):
                raise GalleryError(f"option {name!r} must be a dict of Milvus parameters or None, got {value!r}")
        elif name == "collection":
            if not isinstance(value, str) or not value or not all(c.isalnum() or c == "_" for c in value) \
                    or value[0].isdigit():
                raise GalleryError(f"option 'collection' must be a Milvus collection name (letters, digits, _; "
                                   f"not starting with a digit), got {value!r}")
        elif name == "index_type":
            if value is not None and (not isinstance(value, str) or not value):
                raise GalleryError(f"option 'index_type' must be a Milvus index type such as HNSW, DISKANN or "
                                   f"GPU_CAGRA, or None, got {value!r}")
        elif name == "consistency_level" and value not in ("Strong", "Bounded", "Session", "Eventually"):
            raise GalleryError(f"option 'consistency_level' must be Strong, Bounded, Session or Eventually, "
                               f"got {value!r}")
        out[name] = value
    if kind == "ivf_pq":
        m = out["m"] or auto_pq_m(dim)
        if dim % m:
            raise GalleryError(f"ivf_pq option m={m} must divide the descriptor size {dim}")
        out["m"] = m
    return out


def build_params(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    params = {"ivf_flat": lambda: {"nlist": opts["nlist"]},
              "ivf_pq": lambda: {"nlist": opts["nlist"], "m": opts["m"], "nbits": opts["nbits"]},
              "hnsw": lambda: {"M": opts["hnsw_m"], "efConstruction": opts["ef_construction"]},
              "flat": dict}[kind]()
    return {**params, **(opts["index_params"] or {})}


def search_params(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    params = {"ivf_flat": lambda: {"nprobe": opts["nprobe"]}, "ivf_pq": lambda: {"nprobe": opts["nprobe"]},
              "hnsw": lambda: {"ef": opts["ef_search"]}, "flat": dict}[kind]()
    return {**params, **(opts["search_params"] or {})}
