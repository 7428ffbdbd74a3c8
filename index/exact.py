"""Exact search on the flat kinds where ``Index.search`` is slow: FAISS still computes every score.

Two cases, both measured in ``benchmarks/results/search.md``:

* **Batches smaller than the thread count** (batch 1 on 2 cores), where exact search is a scan of
  the gallery bounded by memory bandwidth. ``IndexScalarQuantizer.search`` (fp16) runs its OpenMP
  loop over queries, so one query scans on one core; ``IndexFlatIP`` (fp32) splits the gallery between
  threads itself for such batches (FAISS >= 1.14.2), but scores each block with an ``sgemm`` of one
  column, at about half of what the memory gives. That is FAISS being the bottleneck, not the hardware;
  the fix keeps FAISS's own scan kernels and only changes how the rows are shared out. :func:`split_search`
  scans ``parts`` contiguous ranges of the stored vectors at once, one FAISS call per range on a
  worker thread (FAISS releases the GIL; each call runs one OpenMP thread, restricted to its range by
  an ``IDSelectorRange``, which ``IndexFlat`` turns into a scan of the sub-array), and merges the
  per-range top-k lists. For fp32 numpy's GEMV over the same rows (``IndexFlat``'s own array, not
  copied) is faster still, close to the bandwidth bound, so fp32 uses :func:`gemv_search`; fp16 has no
  such alternative (numpy has no fast fp16 GEMV) and stays on FAISS's scalar-quantizer scan.
* **Filters.** A search with an ``IDSelector`` takes FAISS's per-query scan, never its ``sgemm``
  path (:mod:`index.faiss_config`): at batch 64 about 10x slower than the unfiltered search, however
  few items the filter allows. :func:`filter_plan` picks instead either a scan of the allowed rows
  only (:func:`subset_search`: gathered, decoded, searched with ``faiss.knn``, i.e. ``sgemm``), or,
  for a filter allowing much of the gallery, the unfiltered search asked for more results and
  filtered after (:func:`index.backends.search_wider`, exact since it widens until every row is full).

Both return *positions* in the inner FAISS index (``-1`` for none); :func:`id_map_view` maps them
to gallery ids without copying.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np

from index.faiss_config import DEFAULT_THREADS

# A filter allowing at most this share of the gallery is searched over its rows alone (gathered),
# when those rows take at most SUBSET_MAX_BYTES as float32; otherwise search wider and filter after.
# At 100,000 x 1536 a quarter of the gallery gathers in ~25 ms and searches 4x faster than the whole,
# while a wider search at that coverage asks for only 2k/0.25 = 80 results (see search.md).
SUBSET_MAX_COVERAGE = 0.25
SUBSET_MAX_BYTES = 256 * 2**20

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_init() -> None:
    faiss.omp_set_num_threads(1)  # a worker scans its range alone; the parallelism is the ranges


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DEFAULT_THREADS, thread_name_prefix="index-scan",
                                       initializer=_worker_init)
        return _pool


def id_map_view(index: faiss.IndexIDMap2) -> np.ndarray:
    """The gallery ids of the inner index's rows, ``[ntotal]`` int64, a view (valid until the next mutation)."""
    n = int(index.id_map.size())
    return faiss.rev_swig_ptr(index.id_map.data(), n) if n else np.zeros(0, dtype=np.int64)


def to_ids(id_map: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Positions (``-1`` for none) -> gallery ids (``-1`` for none)."""
    out = np.full(positions.shape, -1, dtype=np.int64)
    found = positions >= 0
    out[found] = id_map[positions[found]]
    return out


def split_search(inner: faiss.Index, queries: np.ndarray, k: int, parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` over ``parts`` contiguous ranges of ``inner`` in parallel, merged (see the module docstring).

    Args:
        inner: a flat FAISS index (``IndexFlatIP`` or ``IndexScalarQuantizer``, inner product).
        queries: ``[Q, dim]`` float32.
        k: results per query.
        parts: ranges (threads) to split the rows into.

    Returns:
        ``(scores, positions)``, ``[Q, k]``, best first, ``-1`` positions padding short rows.
    """
    n = int(inner.ntotal)
    bounds = np.linspace(0, n, max(1, min(parts, n)) + 1).astype(np.int64)

    def one(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        selector = faiss.IDSelectorRange(lo, hi)  # on IndexFlat, a sub-array scan; elsewhere a bounds test
        params = faiss.SearchParameters()
        params.sel = selector
        return inner.search(queries, k, params=params)

    pieces = list(_executor().map(one, bounds[:-1].tolist(), bounds[1:].tolist()))
    scores = np.concatenate([p[0] for p in pieces], axis=1)
    positions = np.concatenate([p[1] for p in pieces], axis=1)
    scores[positions < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)


def gemv_search(inner: faiss.IndexFlat, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of a few queries over an ``IndexFlatIP``'s own float32 rows (no copy) by numpy GEMV.

    The one place ``index`` computes scores outside FAISS, because FAISS was measured slower at this
    shape (module docstring): numpy's BLAS reads the rows at the memory's speed, then a partial sort.
    NaN scores (a damaged row) are dropped, as FAISS's heaps drop them.

    Returns:
        ``(scores, positions)``, ``[Q, min(k, ntotal)]``, best first, ``-1`` where a score was NaN.
    """
    n, dim = int(inner.ntotal), int(inner.d)
    rows = faiss.rev_swig_ptr(inner.get_xb(), n * dim).reshape(n, dim)
    scores = np.ascontiguousarray((rows @ queries.T).T)  # [Q, n]; one query: a GEMV
    kk = min(k, n)
    np.nan_to_num(scores, copy=False, nan=-np.inf)
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), scores.shape)
    part = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    best, positions = np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1).astype(np.int64)
    positions[np.isneginf(best)] = -1
    return best, positions


def filter_plan(n_allowed: int, n_total: int, dim: int) -> str:
    """``"subset"`` (scan only the allowed rows) or ``"wider"`` (search more, filter after) for an exact kind."""
    small = n_allowed <= SUBSET_MAX_COVERAGE * n_total and n_allowed * dim * 4 <= SUBSET_MAX_BYTES
    return "subset" if small else "wider"


def allowed_positions(id_map: np.ndarray, allowed_ids: np.ndarray) -> np.ndarray:
    """Rows of the inner index whose ids are in ``allowed_ids`` (sorted, unique), ascending."""
    return np.flatnonzero(np.isin(id_map, allowed_ids, assume_unique=True))


def subset_search(inner: faiss.Index, positions: np.ndarray, queries: np.ndarray,
                  k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over the rows ``positions`` of a flat index: gather (decode fp16), then ``faiss.knn``.

    Returns:
        ``(scores, positions)``, ``[Q, min(k, len(positions))]``, best first.
    """
    n, dim = int(inner.ntotal), int(inner.d)
    if isinstance(inner, faiss.IndexFlat):
        rows = faiss.rev_swig_ptr(inner.get_xb(), n * dim).reshape(n, dim)[positions]
    else:  # IndexScalarQuantizer: decode just the allowed codes
        codes = faiss.rev_swig_ptr(inner.codes.data(), n * inner.code_size).reshape(n, inner.code_size)
        rows = inner.sa_decode(codes[positions])
    scores, found = faiss.knn(queries, rows, min(k, len(rows)), metric=faiss.METRIC_INNER_PRODUCT)
    return scores, np.where(found >= 0, positions[np.clip(found, 0, None)], -1)
