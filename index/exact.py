"""Exact search on the flat kinds where ``Index.search`` is slow: FAISS still computes every score.

Two cases, both measured in ``benchmarks/results/search.md``:

* **Batches smaller than the thread count on fp16 storage.** ``IndexScalarQuantizer.search`` runs
  its OpenMP loop over queries, so one query scans the gallery on one core, at one core's share of
  the memory bandwidth (FAISS's fp32 flat search splits the gallery between threads for such
  batches itself; its scalar quantizer does not). :func:`split_search` scans ``parts`` contiguous
  ranges of the stored vectors at once, one FAISS call per range on a worker thread (FAISS releases
  the GIL; each call runs one OpenMP thread, restricted to its range by an ``IDSelectorRange``), and
  merges the per-range top-k lists.
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
