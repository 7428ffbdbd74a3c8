"""``flat_blas``: exact search as one blocked matrix product (numpy/BLAS) plus ``argpartition``.

Why it exists: on this project's CPUs, FAISS's ``IndexFlatIP`` reaches ~10-20 GFLOP/s at batch 64
while a plain ``sgemm`` of the same shape reaches ~90-200 (see ``benchmarks/results/search.md``);
FAISS's wheel ships an older OpenBLAS and folds the top-k into its blocked loop. Batch 1 is a
matrix-vector product, memory-bound either way. Results equal ``flat`` up to float rounding.

The vectors live in a growable float32 array (capacity doubles, so indexing a gallery in many small
batches stays linear). On disk it writes the same file as ``flat`` (an ``IndexIDMap2`` over an
``IndexFlatIP``), so a gallery can be reopened as either kind, and with plain FAISS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.backends import UNIT_TOLERANCE, VectorBackend, check_in_blocks, pad_results, search_wider
from index.errors import CorruptGalleryError, GalleryError

log = logging.getLogger(__name__)

# Score block = queries x rows; 4M floats (16 MB) keeps it in L3-sized pieces without many tiny GEMMs.
_BLOCK_FLOATS = 4 * 1024 * 1024
# With a selective filter, gathering the allowed rows is cheaper than scoring everything and masking.
_GATHER_FRACTION = 0.125


class BlasFlatBackend(VectorBackend):
    """Exact inner-product search by blocked GEMM; no options, CPU only."""

    exact = True

    def __init__(self, kind: str, dim: int, options: dict[str, Any], *, device: str = "auto", **_: Any) -> None:
        if device == "gpu":
            raise GalleryError("kind 'flat_blas' runs on the CPU only; use kind='flat' for GPU search")
        if options:
            raise GalleryError(f"unknown option(s) {sorted(options)} for kind 'flat_blas'; valid options: none")
        self.kind = kind
        self.dim = dim
        self._x = np.zeros((0, dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)
        self._n = 0

    @classmethod
    def deserialize(cls, path: Path, kind: str, dim: int, options: dict[str, Any], state: dict[str, Any],
                    **runtime: Any) -> BlasFlatBackend:
        """Read a ``flat`` index file into the array store."""
        try:
            index = faiss.read_index(str(path))  # already the concrete, owning type
        except (RuntimeError, MemoryError) as exc:
            reason = str(exc).splitlines()[0][:200]
            raise CorruptGalleryError(path, f"is not a readable FAISS index ({reason})") from None
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else None
        if not isinstance(inner, faiss.IndexFlatIP):
            raise CorruptGalleryError(path, "is not an IndexIDMap2 over an IndexFlatIP, as flat_blas expects")
        if index.d != dim:
            raise CorruptGalleryError(path, f"has dimension {index.d} but the manifest says {dim}")
        backend = cls(kind, dim, options, **runtime)
        backend._x = faiss.vector_to_array(inner.codes).view(np.float32).reshape(-1, dim)
        backend._ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        backend._n = len(backend._ids)
        return backend

    @property
    def options(self) -> dict[str, Any]:
        return {}

    def __len__(self) -> int:
        return self._n

    def ids(self) -> np.ndarray:
        return np.sort(self._ids[:self._n])

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        n_new = self._n + len(vectors)
        if n_new > len(self._x):
            capacity = max(n_new, 2 * len(self._x), 1024)
            grown_x = np.empty((capacity, self.dim), dtype=np.float32)
            grown_ids = np.empty(capacity, dtype=np.int64)
            grown_x[:self._n] = self._x[:self._n]
            grown_ids[:self._n] = self._ids[:self._n]
            self._x, self._ids = grown_x, grown_ids
        self._x[self._n:n_new] = vectors
        self._ids[self._n:n_new] = ids
        self._n = n_new

    def remove_ids(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids[:self._n], ids)
        n_new = int(keep.sum())
        self._x[:n_new] = self._x[:self._n][keep]
        self._ids[:n_new] = self._ids[:self._n][keep]
        self._n = n_new

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        live = self._ids[:self._n]
        order = np.argsort(live, kind="stable")
        rows = order[np.searchsorted(live, ids, sorter=order)]
        return self._x[rows].copy()

    def check_vectors(self, path: Path) -> None:
        ids = self._ids[:self._n]
        if len(np.unique(ids)) != len(ids):
            raise CorruptGalleryError(path, "the id map holds an id twice: the index data is damaged")
        check_in_blocks(path, self._n, lambda start, count: self._x[start:start + count], ids, UNIT_TOLERANCE["fp32"],
                        self.dim)

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None, *,
               use_selector: bool = True) -> tuple[np.ndarray, np.ndarray]:
        x, ids = self._x[:self._n], self._ids[:self._n]
        if allowed_ids is not None and not use_selector:
            scores, found, _ = search_wider(lambda q, kk: self._topk(q, kk, x, ids, None), queries, k,
                                            allowed_ids, self._n)
            return scores, found
        mask = None
        if allowed_ids is not None:
            mask = np.isin(ids, allowed_ids)
            if mask.sum() <= _GATHER_FRACTION * len(ids):
                rows = np.flatnonzero(mask)
                x, ids, mask = x[rows], ids[rows], None
        return self._topk(queries, k, x, ids, mask)

    @staticmethod
    def _topk(queries: np.ndarray, k: int, x: np.ndarray, ids: np.ndarray,
              mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        nq, n = len(queries), len(x)
        best_s = np.zeros((nq, 0), dtype=np.float32)
        best_r = np.zeros((nq, 0), dtype=np.int64)
        block = max(4096, _BLOCK_FLOATS // max(nq, 1))
        for start in range(0, n, block):
            scores = queries @ x[start:start + block].T
            if mask is not None:
                scores[:, ~mask[start:start + block]] = -np.inf
            rows = _top_columns(scores, k) + start
            best_s = np.concatenate([best_s, np.take_along_axis(scores, rows - start, axis=1)], axis=1)
            best_r = np.concatenate([best_r, rows], axis=1)
            if best_s.shape[1] > k:
                keep = _top_columns(best_s, k)
                best_s = np.take_along_axis(best_s, keep, axis=1)
                best_r = np.take_along_axis(best_r, keep, axis=1)
        order = np.argsort(-best_s, axis=1, kind="stable")
        best_s = np.take_along_axis(best_s, order, axis=1)
        found = ids[np.take_along_axis(best_r, order, axis=1)] if n else best_r
        found[~np.isfinite(best_s)] = -1
        return pad_results(best_s, found, k)

    def serialize(self, path: Path) -> dict[str, Any]:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self._n:
            index.add_with_ids(self._x[:self._n], self._ids[:self._n])
        faiss.write_index(index, str(path))
        return {}

    def stats(self) -> dict[str, Any]:
        return {"device": "cpu", "trained": True, "approx_bytes": int(self._x.nbytes + self._ids.nbytes)}


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest entries of each row (unordered)."""
    width = scores.shape[1]
    if width <= k:
        return np.broadcast_to(np.arange(width), scores.shape).copy()
    return np.argpartition(scores, width - k, axis=1)[:, width - k:]
