"""How ``index`` runs FAISS on the CPU: the BLAS switch and the thread policy, set once, here.

:mod:`index.faiss_backend` imports this module, which applies :func:`configure` at import, before any
index is built; nothing else in ``index/`` sets ``faiss.cvar`` or the OpenMP thread count (except
:mod:`index.exact`'s worker threads, which each run one).

**BLAS threshold.** FAISS's exact inner-product search (``IndexFlatIP``, ``faiss.knn``) has two
paths for a batch of ``nq`` queries (``faiss/utils/distances.cpp``): a scan, one query per thread,
each computing ``fvec_inner_product`` against every stored vector, or blocks of scores from one
``sgemm`` (4096 queries x 1024 vectors) reduced into top-k heaps. It takes the ``sgemm`` path once
``nq * dim >= faiss.cvar.distance_compute_blas_threshold``: 128,000 by default, i.e. 84 queries at
``dim = 1536``. Below that, every query streams the whole gallery from memory on its own, so a
batch of 64 costs 64 scans, several times slower than one ``sgemm`` of the same product. With
the threshold at ``BLAS_MIN_QUERIES * dim`` the ``sgemm`` path starts at ``BLAS_MIN_QUERIES``
queries; :data:`MEASURED` is the sweep on this project's 2-core machine that chose it.

Batches smaller than the thread count never reach either path: FAISS >= 1.14.2 splits the gallery
between threads for them (``knn_db_parallel_impl``), whatever the threshold, at half the memory's
speed, so :mod:`index.exact` splits them instead. A search with an ``IDSelector`` always takes the
per-query scan (FAISS cannot mask an ``sgemm`` block), which is why :mod:`index.exact` filters exact
searches without one.

**Threads.** FAISS parallelises with OpenMP over all cores by default (``omp_get_max_threads()``
at import, which honours ``OMP_NUM_THREADS``). For tiny searches the fork/join barrier costs more
than the work, and far more on a busy machine where a thread gets descheduled (about 25 ms instead
of < 1 ms for one query over 1k items, ``benchmarks/end_to_end.py``), so below
``SINGLE_THREAD_WORK`` query x item pairs a search runs on the calling thread alone.
``omp_set_num_threads`` changes only the calling thread's setting, so concurrent searches from
other threads are unaffected.
"""

from __future__ import annotations

import logging

import faiss

log = logging.getLogger(__name__)

# The smallest batch for which FAISS's sgemm path is faster than its per-query scan, from MEASURED:
# at batch 2 the scan (one query per core, each streaming the gallery) still wins; from 3 sgemm does.
BLAS_MIN_QUERIES = 3
# Descriptor size the threshold is expressed for; FAISS compares ``nq * dim`` against one global
# number, so galleries of other sizes switch at ``BLAS_MIN_QUERIES * 1536 / dim`` queries.
REFERENCE_DIM = 1536
BLAS_THRESHOLD = BLAS_MIN_QUERIES * REFERENCE_DIM
SINGLE_THREAD_WORK = 20_000
DEFAULT_THREADS = faiss.omp_get_max_threads()

# The measurement behind BLAS_MIN_QUERIES: ms per *batch*, IndexFlatIP over 100,000 x 1536 normalised
# float32, k=10, 2 threads (AMD EPYC, 2 cores, idle; 2026-12-01, /tmp probe, and the same sweep is in
# every benchmarks/search.py run: benchmarks/results/search.md, "per-query scan vs sgemm path").
# (numpy's sgemm of the batch-64 product alone: 105 ms.) FAISS's default threshold puts batch 64 on the
# scan: 731 ms.
MEASURED: dict[str, dict[int, float]] = {
    "scan": {2: 25.2, 3: 43.0, 4: 51.4, 8: 82.7, 64: 731.2},
    "sgemm": {2: 35.2, 3: 35.8, 4: 36.2, 8: 54.1, 64: 99.1},
}


def configure() -> None:
    """Apply this module's FAISS settings (idempotent; called at import)."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    log.debug("faiss: blas threshold %d (nq*dim), %d threads", BLAS_THRESHOLD, DEFAULT_THREADS)


def search_threads(work: int) -> int:
    """OpenMP threads for a search of ``work`` query x item pairs (see the module docstring)."""
    return 1 if work <= SINGLE_THREAD_WORK else DEFAULT_THREADS


def set_search_threads(work: int) -> None:
    """Set the calling thread's OpenMP thread count for a search of ``work`` pairs."""
    faiss.omp_set_num_threads(search_threads(work))


configure()
