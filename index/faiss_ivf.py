"""The IVF kinds of the FAISS backend: training their lists, growing them with the gallery, and keeping ids right.

``ivf_flat`` / ``ivf_pq`` (``IndexIVFFlat`` / ``IndexIVFPQ``: Jégou et al., "Product quantization for nearest
neighbor search", TPAMI 2011) need training; until the gallery holds ``train_size`` vectors it is served by
an exact flat "staging" index, then trained on everything staged. ``nlist`` defaults to ~2·sqrt(N) for the
gallery size N it is trained for (capped at n/39 of the n training vectors, so each centroid gets the 39
points FAISS asks for); ``train(sample, expected_size=N)`` trains earlier, sized for N.

An auto-sized ``ivf_flat`` gallery that grows to 4x the size it was trained for is trained again (on a
sample of itself) with the larger ``nlist``, its lists rebuilt and a recall target re-tuned: lists trained
at the first 1000 items would otherwise hold ~N/25 vectors each at N items, and ``nprobe`` would have to scan
the whole index to keep its recall. Doubling-style growth keeps the re-training cost amortised O(N).
``ivf_pq`` keeps only codes, so its ``nlist`` stays what it was trained with.
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

from index.backends import UNIT_TOLERANCE, auto_pq_m, check_in_blocks
from index.errors import CorruptGalleryError, GalleryError
from index.gpu import GpuMirror

log = logging.getLogger(__name__)

IVF_KINDS = {"ivf_flat", "ivf_pq"}
TRAIN_POINTS_PER_CENTROID = 64
_REGROW_FACTOR = 4  # an auto-sized ivf_flat is re-trained when it holds this many times its trained-for size
_MIGRATE_CHUNK = 65_536  # vectors moved per add while rebuilding lists (bounds the extra memory)


def auto_nlist(expected_size: int, n_train: int) -> int:
    """IVF lists for a gallery of ``expected_size`` trained on ``n_train`` vectors: ~2·sqrt(N), <= n_train/39.

    2·sqrt(N) is the low end of FAISS's guideline (4..16·sqrt(N)): k-means on 2 cores costs ~nlist² ·
    64 · dim, and a recall target picks ``nprobe`` afterwards, so finer lists buy little here.
    """
    return max(1, min(round(2 * math.sqrt(max(expected_size, n_train))), n_train // 39))


def batch_selector(ids: np.ndarray) -> faiss.IDSelector:
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))


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


class IvfLists:
    """The IVF methods of :class:`index.faiss_backend.FaissBackend` (a mixin: the backend's state)."""

    kind: str
    dim: int
    _options: dict[str, Any]
    _growth: dict[str, Any]
    _index: faiss.IndexIDMap2 | None
    _staging: faiss.IndexIDMap2 | None
    _gpu: GpuMirror | None
    _tuning: dict[str, Any] | None

    _apply_search_params: Callable[[], None]  # the backend's own methods
    tune: Callable[..., dict[str, Any]]

    def _build_ivf(self, n_train: int, expected_size: int = 0) -> faiss.Index:
        opts = self._options
        nlist = opts["nlist"] if not self._growth["auto_nlist"] else auto_nlist(expected_size, n_train)
        if n_train < nlist:
            raise GalleryError(f"{self.kind} with nlist={nlist} needs at least {nlist} training vectors, got {n_train}")
        quantizer = faiss.IndexFlatIP(self.dim)
        if self.kind == "ivf_flat":
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            m = opts["m"] or auto_pq_m(self.dim)
            if self.dim % m:
                raise GalleryError(f"ivf_pq option m={m} must divide the descriptor size {self.dim}")
            if n_train < 2 ** opts["nbits"]:
                raise GalleryError(f"ivf_pq with nbits={opts['nbits']} needs at least {2 ** opts['nbits']} "
                                   f"training vectors, got {n_train}")
            ivf = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, opts["nbits"], faiss.METRIC_INNER_PRODUCT)
        # k-means on at most 64 sampled points per centroid (FAISS warns below 39; its default cap is 256):
        # a slightly coarser clustering for a 4x bound on the training time of large galleries.
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
        if self.kind == "ivf_pq":
            ivf.pq.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
        ivf.nprobe = opts["nprobe"]
        return ivf

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
        size = min(n, auto_nlist(n, n) * TRAIN_POINTS_PER_CENTROID)
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

    def _remove_ivf(self, ids: np.ndarray) -> None:
        # IndexIDMap2.remove_ids compacts its id map, which assumes the inner index renumbers what follows
        # a removed vector (IndexFlat does). IVF lists keep their internal ids, so without this every id
        # after the first removed one would name its neighbour's vector. Renumber the lists the same way.
        positions = faiss.vector_to_array(self._index.id_map)
        removed = np.sort(np.flatnonzero(np.isin(positions, ids)))
        self._index.remove_ids(batch_selector(ids))
        ivf = faiss.extract_index_ivf(self._index.index)
        lists = ivf.invlists
        for list_no in range(ivf.nlist):
            size = lists.list_size(list_no)
            if size:
                internal = faiss.rev_swig_ptr(lists.get_ids(list_no), size)  # a writable view of the list
                internal -= np.searchsorted(removed, internal)
        if self._gpu is not None:
            self._gpu.mark_stale()

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
                check_in_blocks(path, size, lambda start, count, v=vectors: v[start:start + count], shown,
                                UNIT_TOLERANCE["fp32"], self.dim)
        internal = np.sort(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
        if not np.array_equal(internal, np.arange(len(ids))):
            # What IVF galleries saved by versions before the renumbering fix look like after a removal.
            raise CorruptGalleryError(path, "the IVF lists and the id map disagree (internal ids are not 0.."
                                            f"{len(ids) - 1}): items would answer with other items' ids; "
                                            f"re-index the gallery")
