"""FAISS backends: exact ``flat`` / ``flat_fp16`` and approximate ``ivf_flat`` / ``ivf_pq`` / ``hnsw``.

Every kind is an ``IndexIDMap2`` around the FAISS index (``IDMap2`` keeps the reverse map, so ids
can be reconstructed and checked), with inner-product metric on normalised vectors = cosine.

* ``flat``: ``IndexFlatIP``, exact.
* ``flat_fp16``: ``IndexScalarQuantizer(QT_fp16)``, exact up to ~1e-3 score error, half the memory
  and bandwidth, which is what batch-1 search is bound by.
* ``ivf_flat`` / ``ivf_pq``: ``IndexIVFFlat`` / ``IndexIVFPQ`` (Jégou et al., "Product quantization
  for nearest neighbor search", TPAMI 2011). They need training; until the gallery holds
  ``train_size`` vectors it is served by an exact flat "staging" index, then trained on everything
  staged. ``nlist`` defaults to ~2·sqrt(N) for the gallery size N it is trained for (capped at n/39 of
  the n training vectors, so each centroid gets the 39 points FAISS asks for); ``train(sample,
  expected_size=N)`` trains earlier, sized for N. An auto-sized ``ivf_flat`` gallery that grows to 4x
  the size it was trained for is trained again (on a sample of itself) with the larger ``nlist``, its
  lists rebuilt and a recall target re-tuned: without it, lists trained at the first 1000 items hold
  ~N/25 vectors each at N items and ``nprobe`` must scan the whole index (issue 18: nlist=447 at 1M
  items needed nprobe=447). Doubling-style growth keeps the re-training cost amortised O(N).
  ``ivf_pq`` keeps only codes, so its ``nlist`` stays what it was trained with.
* ``hnsw``: ``IndexHNSWFlat`` (Malkov & Yashunin, TPAMI 2018). HNSW cannot delete, so removed ids
  become tombstones, filtered out with an ``IDSelector`` and recorded in the manifest; the graph is
  rebuilt once tombstones outnumber live vectors.

FAISS's CPU settings (the BLAS switch, threads) are :mod:`index.faiss_config`'s, applied on import.

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index import exact, tuning
from index.backends import UNIT_TOLERANCE, VectorBackend, check_in_blocks, pad_results, search_wider
from index.errors import CorruptGalleryError, GalleryError
from index.faiss_config import DEFAULT_THREADS, SINGLE_THREAD_WORK, set_search_threads
from index.gpu import GPU_MAX_K, GpuMirror, gpu_count

log = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, Any]] = {
    "flat": {},
    "flat_fp16": {},
    "ivf_flat": {"nlist": None, "nprobe": 16, "train_size": 1000},
    "ivf_pq": {"nlist": None, "nprobe": 16, "m": None, "nbits": 8, "train_size": 5000},
    "hnsw": {"hnsw_m": 32, "ef_construction": 40, "ef_search": 64},
}
SEARCH_PARAMS = {"nprobe", "ef_search"}
_IVF = {"ivf_flat", "ivf_pq"}
_TRAIN_POINTS_PER_CENTROID = 64
_REGROW_FACTOR = 4  # an auto-sized ivf_flat is re-trained when it holds this many times its trained-for size
_MIGRATE_CHUNK = 65_536  # vectors moved per add while rebuilding lists (bounds the extra memory)
_GPU_KINDS = {"flat", "flat_fp16", "ivf_flat", "ivf_pq"}  # FAISS has no GPU HNSW (CAGRA is a different index)
# Exact kinds whose batches smaller than the thread count (batch 1 on 2 cores: a memory-bound scan)
# do not go through Index.search, where FAISS was measured to be the bottleneck (index.exact):
# fp16, FAISS's scalar quantizer scans on one core -> its scan over thread-shared ranges; fp32,
# FAISS's own split (sgemm with one column per block, 25.8 ms over 100,000 x 1536) and even its scan
# over ranges (12.0 ms) are slower than numpy's GEMV on the same memory (9.0 ms; index.exact).
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


def auto_nlist(expected_size: int, n_train: int) -> int:
    """IVF lists for a gallery of ``expected_size`` trained on ``n_train`` vectors: ~2·sqrt(N), <= n_train/39.

    2·sqrt(N) is the low end of FAISS's guideline (4..16·sqrt(N)): k-means on 2 cores costs ~nlist² ·
    64 · dim, and a recall target picks ``nprobe`` afterwards, so finer lists buy little here.
    """
    return max(1, min(round(2 * math.sqrt(max(expected_size, n_train))), n_train // 39))


def _auto_pq_m(dim: int) -> int:
    # ~16 dimensions per sub-quantizer: 96 bytes per 1536-d vector, a common memory/recall point.
    for m in range(max(1, dim // 16), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _ivf_lists(ivf: faiss.IndexIVF, dim: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(internal ids, float32 vectors [size, dim])`` of each non-empty list of an ``IndexIVFFlat``, as views
    into the lists (valid until the index changes)."""
    lists = ivf.invlists
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            internal = faiss.rev_swig_ptr(lists.get_ids(list_no), size)
            codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * ivf.code_size)
            yield internal, np.frombuffer(codes, dtype=np.float32).reshape(size, dim)


def _batch_selector(ids: np.ndarray) -> faiss.IDSelector:
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


class FaissBackend(VectorBackend):
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
        if kind in _IVF:
            self._staging = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        else:
            self._index = faiss.IndexIDMap2(self._build_plain())
        self._gpu = self._make_gpu(device, gpu_fp16)
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

    def _build_ivf(self, n_train: int, expected_size: int = 0) -> faiss.Index:
        opts = self._options
        nlist = opts["nlist"] if not self._growth["auto_nlist"] else auto_nlist(expected_size, n_train)
        if n_train < nlist:
            raise GalleryError(f"{self.kind} with nlist={nlist} needs at least {nlist} training vectors, got {n_train}")
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf_flat":
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = opts["m"] or _auto_pq_m(self.dim)
            if self.dim % m:
                raise GalleryError(f"ivf_pq option m={m} must divide the descriptor size {self.dim}")
            if n_train < 2 ** opts["nbits"]:
                raise GalleryError(f"ivf_pq with nbits={opts['nbits']} needs at least {2 ** opts['nbits']} "
                                   f"training vectors, got {n_train}")
            ivf = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, opts["nbits"], faiss.METRIC_INNER_PRODUCT)
        # k-means on at most 64 sampled points per centroid (FAISS warns below 39; its default cap is 256):
        # a slightly coarser clustering for a 4x bound on the training time of large galleries.
        ivf.cp.max_points_per_centroid = _TRAIN_POINTS_PER_CENTROID
        if self.kind == "ivf_pq":
            ivf.pq.cp.max_points_per_centroid = _TRAIN_POINTS_PER_CENTROID
        ivf.nprobe = opts["nprobe"]
        return ivf

    def _make_gpu(self, device: str, fp16: bool) -> GpuMirror | None:
        if device not in ("auto", "cpu", "gpu"):
            raise GalleryError(f"device must be 'auto', 'cpu' or 'gpu', got {device!r}")
        if device == "cpu":
            return None
        if gpu_count() == 0:
            if device == "gpu":
                raise GalleryError("device='gpu' but FAISS sees no GPU (is faiss-cpu installed instead of faiss-gpu?)")
            return None
        if self.kind not in _GPU_KINDS:
            log.info("kind %r has no FAISS GPU version; it searches on the CPU", self.kind)
            return None
        try:
            return GpuMirror(fp16=fp16)
        except Exception as exc:  # noqa: BLE001 - no usable GPU means CPU, not a crash
            log.warning("could not initialise FAISS GPU resources, searching on the CPU: %s", exc)
            return None

    def _verify_gpu(self) -> None:
        # Copy to the GPU now, so that a GPU that cannot run FAISS is found (and warned about)
        # when the gallery is opened, and ``device`` tells the truth from the start.
        if self._gpu is not None and self._index is not None and not self._gpu.build(self._gpu_source):
            self._gpu = None

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
        backend._growth = ({"auto_nlist": bool(growth.get("auto_nlist")), "trained_for": int(growth.get("trained_for", 0))}
                           if isinstance(growth, dict) else {"auto_nlist": options.get("nlist") is None and
                                                             kind in _IVF and inner == "IndexFlatIP", "trained_for": 0})
        if kind in _IVF and inner == "IndexFlatIP":
            backend._index, backend._staging = None, index  # saved before it had enough vectors to train
        elif inner != _EXPECTED_TYPE[kind]:
            raise CorruptGalleryError(path, f"holds a {inner}, but kind {kind!r} expects {_EXPECTED_TYPE[kind]}")
        if backend._index is not None:
            backend._apply_search_params()
        backend._gpu = backend._make_gpu(device, gpu_fp16)
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
        valid = SEARCH_PARAMS & set(DEFAULTS[self.kind])
        unknown = set(params) - valid
        if unknown:
            raise GalleryError(f"unknown search parameter(s) {sorted(unknown)} for kind {self.kind!r}; "
                               f"valid: {', '.join(sorted(valid)) or 'none'}")
        for name, value in params.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise GalleryError(f"search parameter {name!r} must be a positive int, got {value!r}")
            self._options[name] = int(value)
        if self._index is not None:
            self._apply_search_params()

    def _apply_search_params(self) -> None:
        inner = faiss.downcast_index(self._index.index)
        if self.kind in _IVF:
            inner.nprobe = self._options["nprobe"]
            self._options["nlist"] = int(inner.nlist)
            if self.kind == "ivf_pq":
                self._options["m"], self._options["nbits"] = int(inner.pq.M), int(inner.pq.nbits)
        elif self.kind == "hnsw":
            inner.hnsw.efSearch = self._options["ef_search"]

    # ----------------------------------------------------------------- mutation
    def train(self, vectors: np.ndarray, expected_size: int | None = None) -> None:
        if self.kind not in _IVF:
            log.info("kind %r needs no training; ignoring train()", self.kind)
            return
        if self._index is not None:
            raise GalleryError(f"this {self.kind} gallery is already trained (nlist={self._options['nlist']})")
        self._train_and_migrate(vectors, expected_size or 0)

    def _train_and_migrate(self, vectors: np.ndarray, expected_size: int = 0) -> None:
        staged_count = int(self._staging.ntotal)
        ivf = self._build_ivf(len(vectors), max(expected_size, staged_count))
        log.info("training %s (nlist=%d) on %d vectors", self.kind, ivf.nlist, len(vectors))
        ivf.train(vectors)
        self._growth["trained_for"] = max(expected_size, staged_count, len(vectors))
        index = faiss.IndexIDMap2(ivf)  # FAISS's Python layer keeps ivf (and its quantizer) alive with index
        staged = self._staging
        if staged.ntotal:
            index.add_with_ids(self._staged_vectors(), faiss.vector_to_array(staged.id_map).astype(np.int64))
        self._index, self._staging = index, None
        self._apply_search_params()
        if self._gpu is not None:
            self._gpu.mark_stale()

    def _staged_vectors(self) -> np.ndarray:
        flat = faiss.downcast_index(self._staging.index)
        return faiss.vector_to_array(flat.codes).view(np.float32).reshape(-1, self.dim)

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

    def _maybe_regrow(self) -> None:
        """Re-train an auto-sized ``ivf_flat`` once it holds 4x the items it was sized for (module docstring)."""
        if self.kind != "ivf_flat" or not self._growth["auto_nlist"] or not self._growth["trained_for"]:
            return
        n = int(self._index.ntotal)
        current = int(faiss.extract_index_ivf(self._index.index).nlist)
        if n < _REGROW_FACTOR * self._growth["trained_for"] or auto_nlist(n, n) < 2 * current:
            return
        start = time.perf_counter()
        self._regrow(n)
        log.info("ivf_flat grew to %d items: re-trained with nlist=%d (was %d) in %.1f s", n,
                 self._options["nlist"], current, time.perf_counter() - start)

    def _regrow(self, n: int) -> None:
        """Train new IVF lists sized for the ``n`` stored vectors and move every vector into them.

        The training sample is drawn from the stored vectors (64 per centroid, seeded); vectors move list
        by list in chunks, so the extra memory is the new index plus one chunk. A recall target set by
        :meth:`tune` is measured again with the same target, sample and k: the old ``nprobe`` was chosen
        for lists that no longer exist.
        """
        old = faiss.extract_index_ivf(self._index.index)
        id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        size = min(n, auto_nlist(n, n) * _TRAIN_POINTS_PER_CENTROID)
        wanted = np.zeros(n, dtype=bool)
        wanted[np.random.default_rng(0).choice(n, size=size, replace=False)] = True
        sample = np.concatenate([vectors[wanted[internal]] for internal, vectors in _ivf_lists(old, self.dim)])
        ivf = self._build_ivf(len(sample), n)
        ivf.train(sample)
        del sample
        index = faiss.IndexIDMap2(ivf)
        chunk_vecs: list[np.ndarray] = []
        chunk_ids: list[np.ndarray] = []
        pending = 0
        for internal, vectors in _ivf_lists(old, self.dim):
            chunk_vecs.append(vectors.copy())
            chunk_ids.append(id_map[internal])
            pending += len(internal)
            if pending >= _MIGRATE_CHUNK:
                index.add_with_ids(np.concatenate(chunk_vecs), np.concatenate(chunk_ids))
                chunk_vecs, chunk_ids, pending = [], [], 0
        if chunk_vecs:
            index.add_with_ids(np.concatenate(chunk_vecs), np.concatenate(chunk_ids))
        self._index = index
        self._growth["trained_for"] = n
        self._apply_search_params()
        if self._gpu is not None:
            self._gpu.mark_stale()
        if self._tuning is not None:
            previous = self._tuning
            self.tune(previous["target_recall"], int(previous.get("k", 10)), int(previous.get("sample", 1000)))

    def remove_ids(self, ids: np.ndarray) -> None:
        if self._index is None:
            self._staging.remove_ids(_batch_selector(ids))
        elif self.kind == "hnsw":
            self._deleted = np.union1d(self._deleted, ids)
            if len(self._deleted) > len(self):
                self._compact_hnsw()
        elif self.kind in _IVF:
            self._remove_ivf(ids)
        else:
            self._index.remove_ids(_batch_selector(ids))
            if self._gpu is not None:
                self._gpu.mark_stale()

    def _remove_ivf(self, ids: np.ndarray) -> None:
        # IndexIDMap2.remove_ids compacts its id map, which assumes the inner index renumbers what follows
        # a removed vector (IndexFlat does). IVF lists keep their internal ids, so without this every id
        # after the first removed one would name its neighbour's vector. Renumber the lists the same way.
        positions = faiss.vector_to_array(self._index.id_map)
        removed = np.sort(np.flatnonzero(np.isin(positions, ids)))
        self._index.remove_ids(_batch_selector(ids))
        ivf = faiss.extract_index_ivf(self._index.index)
        lists = ivf.invlists
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                internal = faiss.rev_swig_ptr(lists.get_ids(list_no), size)  # a writable view of the list
                internal -= np.searchsorted(removed, internal)
        if self._gpu is not None:
            self._gpu.mark_stale()

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        live = self._index if self._index is not None else self._staging
        ivf = faiss.extract_index_ivf(live.index) if self._index is not None and self.kind in _IVF else None
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
        if self._index is not None and self.kind in _IVF:
            self._check_ivf(path, ids)
            return
        tolerance = UNIT_TOLERANCE["fp16" if self.kind == "flat_fp16" else "fp32"]
        inner = faiss.downcast_index(live.index)
        check_in_blocks(path, int(inner.ntotal), lambda start, count: inner.reconstruct_n(start, count), ids, tolerance,
                        self.dim)

    def _check_ivf(self, path: Path, ids: np.ndarray) -> None:
        ivf = faiss.extract_index_ivf(self._index.index)
        quantizer = faiss.downcast_index(ivf.quantizer)
        centroids = quantizer.reconstruct_n(0, int(quantizer.ntotal))
        if not np.isfinite(centroids).all():
            raise CorruptGalleryError(path, "the IVF coarse centroids hold NaN or infinite values: the index is "
                                            "damaged")
        pq = faiss.downcast_index(self._index.index).pq if self.kind == "ivf_pq" else None
        if pq is not None and not np.isfinite(faiss.vector_to_array(pq.centroids)).all():
            raise CorruptGalleryError(path, "the PQ codebooks hold NaN or infinite values: the index is damaged")
        lists, seen = ivf.invlists, []
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if not size:
                continue
            internal = faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy()
            seen.append(internal)
            if self.kind == "ivf_flat":
                codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * ivf.code_size)
                vectors = np.frombuffer(codes, dtype=np.float32).reshape(size, self.dim)
                inside = (internal >= 0) & (internal < len(ids))
                shown = np.where(inside, ids[np.clip(internal, 0, max(len(ids) - 1, 0))], -1) if len(ids) else internal
                check_in_blocks(path, size, lambda start, count: vectors[start:start + count], shown,
                                UNIT_TOLERANCE["fp32"], self.dim)
        internal = np.sort(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
        if not np.array_equal(internal, np.arange(len(ids))):
            # What IVF galleries saved by versions before the renumbering fix look like after a removal.
            raise CorruptGalleryError(path, "the IVF lists and the id map disagree (internal ids are not 0.."
                                            f"{len(ids) - 1}): items would answer with other items' ids; "
                                            f"re-index the gallery")

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
            if exact.filter_plan(len(allowed_ids), len(self), self.dim) == "subset":
                return self._search_subset(queries, k, allowed_ids)
        elif use_selector:
            return self._search_cpu(queries, k, allowed_ids)
        scores, ids, _ = search_wider(lambda q, kk: self._search_cpu(q, kk, None), queries, k, allowed_ids, len(self))
        return scores, ids

    def _search_subset(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact kinds, selective filter: FAISS over the allowed rows only (see :mod:`index.exact`)."""
        id_map = exact.id_map_view(self._index)
        positions = exact.allowed_positions(id_map, allowed_ids)
        set_search_threads(len(queries) * len(positions))
        scores, found = exact.subset_search(faiss.downcast_index(self._index.index), positions, queries, k)
        return pad_results(scores, exact.to_ids(id_map, found), k)

    def _search_gpu(self, queries: np.ndarray, k: int,
                    allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        nprobe = self._options.get("nprobe")
        source = self._gpu_source
        if allowed_ids is None:
            answer = self._gpu.search(source, queries, min(k, len(self)), nprobe)
            if answer is None:
                return None
            scores, ids = pad_results(*answer, k)
            complete = (ids >= 0).sum(axis=1) >= min(k, len(self))
        else:
            # GPU indexes take no IDSelector: search wider on the GPU, finish short rows on the CPU.
            def gpu_search(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                got = self._gpu.search(source, q, kk, nprobe)
                if got is None:
                    raise _GpuGaveUp
                return pad_results(*got, kk)
            try:
                scores, ids, complete = search_wider(gpu_search, queries, k, allowed_ids, len(self), GPU_MAX_K)
            except _GpuGaveUp:
                return None
        if not complete.all():
            rows = np.flatnonzero(~complete)
            scores[rows], ids[rows] = self._search_cpu(queries[rows], k, allowed_ids)
        return scores, ids

    def _gpu_source(self) -> faiss.Index:
        if self.kind != "flat_fp16":
            return self._index
        # FAISS has no GPU scalar-quantizer flat index; fp16 storage on the GPU is a GpuIndexFlat with
        # useFloat16, built from the decoded vectors.
        sq = faiss.downcast_index(self._index.index)
        ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if len(ids):
            flat.add_with_ids(sq.sa_decode(faiss.vector_to_array(sq.codes).reshape(len(ids), -1)), ids)
        if self._gpu is not None:
            self._gpu.fp16 = True
        return flat

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
            selector = _batch_selector(allowed_ids)
        elif len(self._deleted):
            inner = _batch_selector(self._deleted)
            keep_alive.append(inner)
            selector = faiss.IDSelectorNot(inner)
        work = len(queries) * n_candidates
        if selector is None and self.kind in _SMALL_BATCH and len(queries) < DEFAULT_THREADS < n_candidates \
                and work > SINGLE_THREAD_WORK:
            inner = faiss.downcast_index(index.index)
            if _SMALL_BATCH[self.kind] == "gemv":
                scores, found = exact.gemv_search(inner, queries, need)
            else:
                scores, found = exact.split_search(inner, queries, need, DEFAULT_THREADS)
            return pad_results(scores, exact.to_ids(exact.id_map_view(index), found), k)
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
            elif self.kind in _IVF:
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
        if self.kind in _IVF:
            return self._options["nprobe"] * scale < self._options["nlist"]
        return self._options["ef_search"] * scale < max(self._index.ntotal, 1)

    # ----------------------------------------------------------------- persistence
    def serialize(self, path: Path) -> dict[str, Any]:
        faiss.write_index(self._index if self._index is not None else self._staging, str(path))
        state: dict[str, Any] = {"deleted_ids": self._deleted.tolist()} if len(self._deleted) else {}
        if self._tuning is not None:
            state["tuning"] = self._tuning
        if self.kind in _IVF:
            state["growth"] = dict(self._growth)
        return state

    def stats(self) -> dict[str, Any]:
        n, d = len(self), self.dim
        per_vector = {"flat": 4 * d, "flat_fp16": 2 * d, "ivf_flat": 4 * d, "hnsw": 4 * d + 8 * self._options.get("hnsw_m", 0),
                      "ivf_pq": math.ceil((self._options.get("m") or _auto_pq_m(d)) * self._options.get("nbits", 8) / 8)}
        bytes_ = n * (per_vector[self.kind] + 16) if self._index is not None else n * (4 * d + 16)
        out = {"device": self.device, "trained": self.is_trained, "approx_bytes": int(bytes_)}
        if self.kind == "hnsw":
            out["tombstones"] = len(self._deleted)
        if self.kind in _IVF and self._index is not None:
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
        nlist = int(faiss.extract_index_ivf(inner).nlist) if self.kind in _IVF else None
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
            exhaustive = tuning.exhaustive_hnsw(inner)
            truth = lambda q, kk: exact.to_ids(id_map, exhaustive(q, kk))  # noqa: E731
        record = tuning.tune(search, truth, queries, ids, self.kind, nlist, tuning.check_target(target), k)
        record["count"] = len(live)
        record["truth"] = {"ivf_flat": "exhaustive (nprobe = nlist): exact", "hnsw": "exact (the graph's flat storage)"
                           }[self.kind]
        self._options[record["param"]] = record["value"]
        self._apply_search_params()
        self._tuning = record
        return record


class _GpuGaveUp(Exception):
    """The GPU copy could not answer; fall back to the CPU."""
