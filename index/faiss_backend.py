"""FAISS backends: exact ``flat`` / ``flat_fp16`` and approximate ``ivf_flat`` / ``ivf_pq`` / ``hnsw``.

Every kind is an ``IndexIDMap2`` around the FAISS index (``IDMap2`` keeps the reverse map, so ids
can be reconstructed and checked), with inner-product metric on normalised vectors = cosine.

* ``flat``: ``IndexFlatIP``, exact.
* ``flat_fp16``: ``IndexScalarQuantizer(QT_fp16)``, exact up to ~1e-3 score error, half the memory
  and bandwidth, which is what batch-1 search is bound by.
* ``ivf_flat`` / ``ivf_pq``: ``IndexIVFFlat`` / ``IndexIVFPQ``, trained once the gallery holds
  ``train_size`` vectors (an exact "staging" index serves it until then), with ``nlist`` sized for the
  gallery and grown with it (:mod:`index.faiss_ivf`).
* ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin, TPAMI 2018). HNSW cannot delete, so removed ids
  become tombstones, filtered out with an ``IDSelector`` and recorded in the manifest; the graph is
  rebuilt once tombstones outnumber live vectors.

FAISS's CPU settings (the BLAS switch, threads) are :mod:`index.faiss_config`'s, applied on import; the
GPU copy that searches where a GPU is present is :mod:`index.gpu`'s.

Filtered search (``filter_mode``): ``selector`` passes an ``IDSelectorBatch`` of the allowed ids in the
search parameters (every kind above supports one on the CPU); ``wider`` searches unfiltered for more
and filters after; ``auto`` is ``selector`` for the approximate kinds and, for the exact kinds (where a
selector forces FAISS's slow per-query scan), a scan of just the allowed rows for a selective filter
or ``wider`` for a broad one (:func:`index.exact.filter_plan`). Approximate kinds can come back short of
``k`` (a tight filter, or too few vectors in the probed lists): those rows are searched again with 4x
``nprobe`` / ``efSearch`` until complete or the whole index has been scanned.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.backends import (
    SEARCH_PARAMS,
    UNIT_TOLERANCE,
    VectorBackend,
    auto_pq_m,
    check_in_blocks,
    checked_search_params,
    pad_results,
    search_wider,
)
from index.errors import CorruptGalleryError, GalleryError
from index.exact import allowed_positions, filter_plan, gemv_search, id_map_view, split_search, subset_search, to_ids
from index.faiss_config import DEFAULT_THREADS, SINGLE_THREAD_WORK, set_search_threads
from index.faiss_ivf import IVF_KINDS, IvfLists, auto_nlist, batch_selector
from index.gpu import GpuSearch, place
from index.tuning import check_target, exhaustive_hnsw
from index.tuning import tune as tune_to_target

__all__ = ["DEFAULTS", "SEARCH_PARAMS", "FaissBackend", "auto_nlist", "resolve_options"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "flat_fp16": {},
    "ivf_flat": {"nlist": None, "nprobe": 16, "train_size": 1000},
    "ivf_pq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8, "train_size": 5000},
    "hnsw": {"hnsw_m": 32, "ef_construction": 40, "ef_search": 64},
}
# Exact kinds whose batches smaller than the thread count (batch 1 on 2 cores: a memory-bound scan)
# do not go through Index.search, where FAISS is the bottleneck (index.exact, benchmarks/results/search.md):
# fp16, FAISS's scalar quantizer scans on one core -> its scan over thread-shared ranges; fp32,
# FAISS's own split (sgemm with one column per block) and even its scan over ranges are slower than
# numpy's GEMV on the same memory.
_SMALL_BATCH = {"flat": "gemv", "flat_fp16": "split"}
_EXPECTED_TYPE = {"flat": "IndexFlatIP", "flat_fp16": "IndexScalarQuantizer", "ivf_flat": "IndexIVFFlat",
                  "ivf_pq": "IndexIVFPQ", "hnsw": "IndexHNSWFlat"}


def resolve_options(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check types; unknown names raise with the valid ones listed."""
    defaults = DEFAULTS[kind]
    unknown = set(options) - set(defaults)
    if unknown:
        valid = ", ".join(sorted(defaults)) or "none"
        raise GalleryError(f"unknown option(s) {sorted(unknown)} for kind {kind!r}; valid options: {valid}")
    out = dict(defaults)
    for name, value in options.items():
        if value is None and defaults[name] is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise GalleryError(f"option {name!r} must be a positive int, got {value!r}")
        out[name] = int(value)
    if kind == "ivf_pq" and not 1 <= out["nbits"] <= 16:
        raise GalleryError(f"option 'nbits' must be between 1 and 16, got {out['nbits']}")
    return out


class FaissBackend(IvfLists, GpuSearch, VectorBackend):
    """One FAISS index (``IndexIDMap2``) of the given kind; see the module docstring."""

    def __init__(self, kind: str, dim: int, options: dict[str, Any], *, device: str = "auto",
                 gpu_fp16: bool = False) -> None:
        self.kind = kind
        self.dim = dim
        self.exact = kind in ("flat", "flat_fp16")
        self._options = resolve_options(kind, options)
        self._index: faiss.IndexIDMap2 | None = None
        self._staging: faiss.IndexIDMap2 | None = None
        self._deleted = np.zeros(0, dtype=np.int64)  # hnsw tombstones, sorted
        self._tuning: dict[str, Any] | None = None  # the last recall-target tuning (index.tuning)
        # nlist sized automatically (None) may grow with the gallery; "trained_for": the N it was sized for
        self._growth: dict[str, Any] = {"auto_nlist": options.get("nlist") is None, "trained_for": 0}
        if kind in IVF_KINDS:
            self._staging = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            self._index = faiss.IndexIDMap2(self._build_plain())
        self._gpu = place(kind, device, gpu_fp16)
        self._verify_gpu()

    # ----------------------------------------------------------------- construction
    def _build_plain(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if self.kind == "flat_fp16":
            return faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        hnsw = faiss.IndexHNSWFlat(self.dim, self._options["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = self._options["ef_construction"]
        hnsw.hnsw.efSearch = self._options["ef_search"]
        return hnsw

    @classmethod
    def deserialize(cls, path: Path, kind: str, dim: int, options: dict[str, Any], state: dict[str, Any], *,
                    device: str = "auto", gpu_fp16: bool = False) -> FaissBackend:
        """Load an index written by :meth:`serialize` and check that it is the kind the manifest says."""
        try:
            index = faiss.read_index(str(path))  # already the concrete, owning type
        except (RuntimeError, MemoryError) as exc:
            reason = str(exc).splitlines()[0][:200]
            raise CorruptGalleryError(path, f"is not a readable FAISS index ({reason})") from None
        if not isinstance(index, faiss.IndexIDMap2):
            raise CorruptGalleryError(path, f"holds a {type(index).__name__}, expected an IndexIDMap2")
        if index.d != dim:
            raise CorruptGalleryError(path, f"has dimension {index.d} but the manifest says {dim}")
        inner = type(faiss.downcast_index(index.index)).__name__
        backend = cls.__new__(cls)
        backend.kind, backend.dim, backend.exact = kind, dim, kind in ("flat", "flat_fp16")
        backend._options = resolve_options(kind, options)
        backend._index, backend._staging = index, None
        backend._deleted = np.unique(np.asarray(state.get("deleted_ids", []), dtype=np.int64))
        backend._tuning = state.get("tuning") if isinstance(state.get("tuning"), dict) else None
        growth = state.get("growth")
        # galleries saved before growth was recorded keep the nlist they were trained with
        if isinstance(growth, dict):
            backend._growth = {"auto_nlist": bool(growth.get("auto_nlist")),
                               "trained_for": int(growth.get("trained_for", 0))}
        else:
            backend._growth = {"auto_nlist": options.get("nlist") is None and kind in IVF_KINDS
                               and inner == "IndexFlatIP", "trained_for": 0}
        if kind in IVF_KINDS and inner == "IndexFlatIP":
            backend._index, backend._staging = None, index  # saved before it had enough vectors to train
        elif inner != _EXPECTED_TYPE[kind]:
            raise CorruptGalleryError(path, f"holds a {inner}, but kind {kind!r} expects {_EXPECTED_TYPE[kind]}")
        if backend._index is not None:
            backend._apply_search_params()
        backend._gpu = place(kind, device, gpu_fp16)
        backend._verify_gpu()
        return backend

    # ----------------------------------------------------------------- state
    @property
    def options(self) -> dict[str, Any]:
        return dict(self._options)

    @property
    def tombstones(self) -> bool:  # type: ignore[override]
        return self.kind == "hnsw"

    @property
    def estimated_scores(self) -> bool:  # type: ignore[override]
        return self.kind == "ivf_pq" and self._index is not None

    @property
    def device(self) -> str:
        return "gpu" if self._gpu is not None and not self._gpu.failed and self._index is not None else "cpu"

    @property
    def is_trained(self) -> bool:
        return self._index is not None

    def __len__(self) -> int:
        live = self._index if self._index is not None else self._staging
        return int(live.ntotal) - len(self._deleted)

    def ids(self) -> np.ndarray:
        live = self._index if self._index is not None else self._staging
        ids = np.sort(faiss.vector_to_array(live.id_map).astype(np.int64))
        return np.setdiff1d(ids, self._deleted, assume_unique=True) if len(self._deleted) else ids

    def set_search_params(self, **params: Any) -> None:
        self._options.update(checked_search_params(params, SEARCH_PARAMS & set(DEFAULTS[self.kind]),
                                                   f"kind {self.kind!r}"))
        if self._index is not None:
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        inner = faiss.downcast_index(self._index.index)
        if self.kind in IVF_KINDS:
            inner.nprobe = self._options["nprobe"]
            self._options["nlist"] = int(inner.nlist)
            if self.kind == "ivf_pq":
                self._options["m"], self._options["nbits"] = int(inner.pq.M), int(inner.pq.nbits)
        elif self.kind == "hnsw":
            inner.hnsw.efSearch = self._options["ef_search"]

    # ----------------------------------------------------------------- mutation
    def train(self, vectors: np.ndarray, expected_size: int | None = None) -> None:
        if self.kind not in IVF_KINDS:
            log.info("kind %r needs no training; ignoring train()", self.kind)
            return
        if self._index is not None:
            raise GalleryError(f"this {self.kind} gallery is already trained (nlist={self._options['nlist']})")
        self._train_and_migrate(vectors, expected_size or 0)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if self._index is None:
            self._staging.add_with_ids(vectors, ids)
            if self._staging.ntotal >= self._options["train_size"]:
                try:
                    self._train_and_migrate(self._staged_vectors())
                except (RuntimeError, GalleryError) as exc:
                    # The vectors are stored and searchable exactly; training is retried on the next add.
                    log.warning("training %s failed, still searching exactly: %s", self.kind, exc)
            return
        self._index.add_with_ids(vectors, ids)
        if self._gpu is not None:
            self._gpu.add_with_ids(vectors, ids)
        self._maybe_regrow()

    def remove_ids(self, ids: np.ndarray) -> None:
        if self._index is None:
            self._staging.remove_ids(batch_selector(ids))
        elif self.kind == "hnsw":
            self._deleted = np.union1d(self._deleted, ids)
            if len(self._deleted) > len(self):
                self._compact_hnsw()
        elif self.kind in IVF_KINDS:
            self._remove_ivf(ids)
        else:
            self._index.remove_ids(batch_selector(ids))
            if self._gpu is not None:
                self._gpu.mark_stale()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        live = self._index if self._index is not None else self._staging
        ivf = faiss.extract_index_ivf(live.index) if self._index is not None and self.kind in IVF_KINDS else None
        if ivf is not None:
            ivf.make_direct_map(True)  # only for this call: it costs 8 bytes a vector to keep
        try:
            return np.vstack([live.reconstruct(int(i)) for i in ids]).astype(np.float32)
        finally:
            if ivf is not None:
                ivf.set_direct_map_type(faiss.DirectMap.NoMap)

    def restore(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.kind == "hnsw" and self._index is not None and np.isin(ids, self._deleted).all():
            self._deleted = np.setdiff1d(self._deleted, ids, assume_unique=True)  # still in the graph
            return
        # ivf_pq: the decoded vector is re-encoded, which gives back the same code in all but rare cases.
        self.add_with_ids(vectors, ids)

    def check_vectors(self, path: Path) -> None:
        live = self._index if self._index is not None else self._staging
        ids = faiss.vector_to_array(live.id_map).astype(np.int64)
        if len(np.unique(ids)) != len(ids) or (len(ids) and ids.min() < 0):
            raise CorruptGalleryError(path, "the id map holds a negative or repeated id: the index data is damaged")
        if self._index is not None and self.kind in IVF_KINDS:
            self._check_ivf(path, ids)
            return
        tolerance = UNIT_TOLERANCE["fp16" if self.kind == "flat_fp16" else "fp32"]
        inner = faiss.downcast_index(live.index)
        check_in_blocks(path, int(inner.ntotal), lambda start, count: inner.reconstruct_n(start, count), ids, tolerance,
                        self.dim)

    def _compact_hnsw(self) -> None:
        log.info("rebuilding the HNSW graph without %d removed vectors", len(self._deleted))
        storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
        vectors = faiss.vector_to_array(storage.codes).view(np.float32).reshape(-1, self.dim)
        all_ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        live = ~np.isin(all_ids, self._deleted)
        index = faiss.IndexIDMap2(self._build_plain())
        index.add_with_ids(np.ascontiguousarray(vectors[live]), all_ids[live])
        self._index, self._deleted = index, np.zeros(0, dtype=np.int64)

    # ----------------------------------------------------------------- search
    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, *,
               use_selector: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self._gpu is not None and self._index is not None and not self._gpu.failed:
            answer = self._search_gpu(queries, k, allowed_ids)
            if answer is not None:
                return answer
        if allowed_ids is None:
            return self._search_cpu(queries, k, None)
        if use_selector is None:  # filter_mode "auto"
            if not self.exact or self._index is None:
                return self._search_cpu(queries, k, allowed_ids)
            if filter_plan(len(allowed_ids), len(self), self.dim) == "subset":
                return self._search_subset(queries, k, allowed_ids)
        elif use_selector:
            return self._search_cpu(queries, k, allowed_ids)
        scores, ids, _ = search_wider(lambda q, kk: self._search_cpu(q, kk, None), queries, k, allowed_ids, len(self))
        return scores, ids

    def _search_subset(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact kinds, selective filter: FAISS over the allowed rows only (see :mod:`index.exact`)."""
        id_map = id_map_view(self._index)
        positions = allowed_positions(id_map, allowed_ids)
        set_search_threads(len(queries) * len(positions))
        scores, found = subset_search(faiss.downcast_index(self._index.index), positions, queries, k)
        return pad_results(scores, to_ids(id_map, found), k)

    def _search_cpu(self, queries: np.ndarray, k: int,
                    allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        index = self._index if self._index is not None else self._staging
        if allowed_ids is not None and len(self._deleted):
            allowed_ids = np.setdiff1d(allowed_ids, self._deleted, assume_unique=True)
        n_candidates = len(self) if allowed_ids is None else len(allowed_ids)
        need = min(k, n_candidates)
        if need == 0:
            return pad_results(np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64), k)
        selector: faiss.IDSelector | None = None
        keep_alive: list[Any] = []  # FAISS selectors hold raw pointers: keep their Python owners alive
        if allowed_ids is not None:
            selector = batch_selector(allowed_ids)
        elif len(self._deleted):
            inner = batch_selector(self._deleted)
            keep_alive.append(inner)
            selector = faiss.IDSelectorNot(inner)
        work = len(queries) * n_candidates
        if selector is None and self.kind in _SMALL_BATCH and len(queries) < DEFAULT_THREADS < n_candidates \
                and work > SINGLE_THREAD_WORK:
            inner = faiss.downcast_index(index.index)
            if _SMALL_BATCH[self.kind] == "gemv":
                scores, found = gemv_search(inner, queries, need)
            else:
                scores, found = split_search(inner, queries, need, DEFAULT_THREADS)
            return pad_results(scores, to_ids(id_map_view(index), found), k)
        make_params = self._params_factory(index, selector)
        set_search_threads(work)
        scale = 1
        scores, ids = index.search(queries, need, params=make_params(scale))
        while not self.exact and self._index is not None:
            short = np.flatnonzero((ids >= 0).sum(axis=1) < need)
            if short.size == 0 or not self._can_widen(scale):
                break
            scale *= 4
            scores[short], ids[short] = index.search(queries[short], need, params=make_params(scale))
        return pad_results(scores, ids, k)

    def _params_factory(self, index: faiss.Index, selector: faiss.IDSelector | None
                        ) -> Callable[[int], faiss.SearchParameters | None]:
        opts = self._options

        def make(scale: int) -> faiss.SearchParameters | None:
            if index is self._staging or self.exact:
                params = faiss.SearchParameters() if selector is not None else None
            elif self.kind in IVF_KINDS:
                params = faiss.SearchParametersIVF()
                params.nprobe = min(opts["nlist"], opts["nprobe"] * scale)
            else:
                params = faiss.SearchParametersHNSW()
                params.efSearch = opts["ef_search"] * scale
            if params is not None and selector is not None:
                params.sel = selector
            return params

        make.selector = selector  # type: ignore[attr-defined]  # keeps the selector referenced
        return make

    def _can_widen(self, scale: int) -> bool:
        if self.kind in IVF_KINDS:
            return self._options["nprobe"] * scale < self._options["nlist"]
        return self._options["ef_search"] * scale < max(self._index.ntotal, 1)

    # ----------------------------------------------------------------- persistence
    def serialize(self, path: Path) -> dict[str, Any]:
        faiss.write_index(self._index if self._index is not None else self._staging, str(path))
        state: dict[str, Any] = {"deleted_ids": self._deleted.tolist()} if len(self._deleted) else {}
        if self._tuning is not None:
            state["tuning"] = self._tuning
        if self.kind in IVF_KINDS:
            state["growth"] = dict(self._growth)
        return state

    def stats(self) -> dict[str, Any]:
        n, d = len(self), self.dim
        per_vector = {"flat": 4 * d, "flat_fp16": 2 * d, "ivf_flat": 4 * d,
                      "hnsw": 4 * d + 8 * self._options.get("hnsw_m", 0),
                      "ivf_pq": math.ceil((self._options.get("m") or auto_pq_m(d)) * self._options.get("nbits", 8) / 8)}
        bytes_ = n * (per_vector[self.kind] + 16) if self._index is not None else n * (4 * d + 16)
        out = {"device": self.device, "trained": self.is_trained, "approx_bytes": int(bytes_)}
        if self.kind == "hnsw":
            out["tombstones"] = len(self._deleted)
        if self.kind in IVF_KINDS and self._index is not None:
            out["nlist_sized_for"] = self._growth["trained_for"]
        if self._tuning is not None:
            out["tuning"] = dict(self._tuning)
        return out

    # ----------------------------------------------------------------- recall target
    def tune(self, target: float, k: int = 10, sample: int = 1000, seed: int = 0) -> dict[str, Any]:
        """Set ``nprobe`` / ``ef_search`` to the cheapest value whose held-out recall@k reaches ``target``.

        See :mod:`index.tuning`. Returns the record also kept in :meth:`stats` and saved with the gallery.
        """
        if self.exact:
            raise GalleryError(f"kind {self.kind!r} is exact (recall 1): it has no search parameters to tune")
        if self.kind == "ivf_pq":
            # It keeps only PQ codes: held-out queries would be decoded items and the truth PQ's own ranking, which
            # the benchmark measured as held-out recall 1.0 at nprobe=1 where the true recall@10 was 0.36 (1e5 items).
            raise GalleryError("kind 'ivf_pq' cannot be tuned from its own data (it keeps no exact vectors to measure "
                               "recall against); use ivf_flat or hnsw with a recall target")
        if self._index is None:
            raise GalleryError(f"this {self.kind} gallery is not trained yet (it searches exactly until it holds "
                               f"{self._options['train_size']} items, or train() is called): nothing to tune")
        id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        live = np.flatnonzero(~np.isin(id_map, self._deleted)) if len(self._deleted) else np.arange(len(id_map))
        if len(live) <= k + 1:
            raise GalleryError(f"tuning needs more than k + 1 = {k + 1} items, the gallery holds {len(live)}")
        rows = np.sort(np.random.default_rng(seed).choice(live, size=min(sample, len(live)), replace=False))
        ids = id_map[rows]
        queries = np.ascontiguousarray(self.reconstruct(ids), dtype=np.float32)
        inner = faiss.downcast_index(self._index.index)
        nlist = int(faiss.extract_index_ivf(inner).nlist) if self.kind in IVF_KINDS else None
        set_search_threads(len(queries) * len(live))

        def search(q: np.ndarray, kk: int, value: int) -> np.ndarray:
            params = faiss.SearchParametersIVF() if nlist else faiss.SearchParametersHNSW()
            if nlist:
                params.nprobe = value
            else:
                params.efSearch = max(value, kk)
            return self._index.search(q, kk, params=params)[1]

        if nlist:
            truth = lambda q, kk: search(q, kk, nlist)  # noqa: E731 - every list: exhaustive
        else:
            exhaustive = exhaustive_hnsw(inner)
            truth = lambda q, kk: to_ids(id_map, exhaustive(q, kk))  # noqa: E731
        record = tune_to_target(search, truth, queries, ids, self.kind, nlist, check_target(target), k)
        record["count"] = len(live)
        record["truth"] = {"ivf_flat": "exhaustive (nprobe = nlist): exact", "hnsw": "exact (the graph's flat storage)"
                           }[self.kind]
        self._options[record["param"]] = record["value"]
        self._apply_search_params()
        self._tuning = record
        return record
