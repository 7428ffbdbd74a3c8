"""Recall targets for the approximate kinds: pick ``nprobe`` / ``ef_search`` from a measured sample.

An operator can't choose ``nprobe=16`` knowing what it costs in missed matches (``benchmarks/results/search.md``
measures it), but can say "recall@10 >= 0.95". :func:`tune` measures it the
way FAISS's ``ParameterSpace`` / ``OperatingPoints`` autotuning does (try increasing search-time
parameters, keep the cheapest that reaches the target), on the gallery's own data:

* queries: ``sample`` stored vectors drawn at random (seeded); each is *held out* of its own answer:
  both the exact and the approximate top-``k + 1`` drop the query's own id, so an item that trivially
  finds itself does not count as a match;
* truth: the exhaustive search of the same index (``nprobe = nlist`` for ``ivf_flat``: exact;
  ``faiss.knn`` over the HNSW graph's flat storage). ``ivf_pq`` is refused: it keeps only codes, so
  its queries would be decoded items and its truth PQ's own ranking (held-out recall 1.0 at
  ``nprobe=1`` where the true recall@10 was 0.36, ``benchmarks/results/search.md`` before the refusal);
* the held-out items are gallery items, which sit in denser regions than a camera's queries: at 1e4
  items HNSW tuned to 0.95 held-out measured 0.92 on the benchmark's own queries (at 1e5: 0.97);
* candidates: ``nprobe`` in 1, 2, 4, ... ``nlist``; ``ef_search`` in ``k + 1``, 32, 64, ... 4096.

The result (target, measured recall, parameter, sample size) is stored with the gallery (the
manifest's ``backend_state``) and shown in ``Gallery.stats()["tuning"]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faiss
import numpy as np

from index.errors import GalleryError

log = logging.getLogger(__name__)

_EF_MAX = 4096


def check_target(target: Any) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < float(target) <= 1:
        raise GalleryError(f"target_recall must be a number in (0, 1], got {target!r}")
    return float(target)


def held_out_recall(found: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Mean recall@k of ``found`` against ``truth`` (both ``[Q, k + 1]`` ids), each row without its own query id."""
    total = 0.0
    for f, t, own in zip(found, truth, self_ids):
        t = [i for i in t.tolist() if i != own and i >= 0][:k]
        f = [i for i in f.tolist() if i != own and i >= 0][:k]
        total += len(set(f) & set(t)) / max(1, len(t))
    return total / max(1, len(found))


def candidates(kind: str, nlist: int | None, k: int) -> tuple[str, list[int]]:
    """The search parameter tuned for ``kind`` and the values tried, cheapest first."""
    if kind in ("ivf_flat", "ivf_pq"):
        values = [1 << i for i in range(max(1, int(nlist)).bit_length()) if 1 << i < nlist] + [int(nlist)]
        return "nprobe", values
    if kind == "hnsw":
        values = [k + 1] + [v for v in (32, 64, 128, 256, 512, 1024, 2048, _EF_MAX) if v > k + 1]
        return "ef_search", values
    raise GalleryError(f"kind {kind!r} is exact: it has no search parameters to tune")


def tune(search: Any, truth_search: Any, vectors: np.ndarray, ids: np.ndarray, kind: str, nlist: int | None,
         target: float, k: int) -> dict[str, Any]:
    """Try each candidate of :func:`candidates` until the held-out recall reaches ``target``.

    Args:
        search: ``(queries, k, value) -> ids`` with the tuned parameter set to ``value``.
        truth_search: ``(queries, k) -> ids`` exhaustive.
        vectors: ``[S, dim]`` the sample's stored vectors (the queries).
        ids: ``[S]`` their ids.
        kind: the gallery kind.
        nlist: IVF lists (None for HNSW).
        target: recall@k to reach.
        k: the recall depth.

    Returns:
        The record stored with the gallery: ``target_recall``, ``recall``, ``param``, ``value``, ``k``,
        ``sample``, ``met``, ``tried`` (value -> recall) and ``seconds``.
    """
    started = time.perf_counter()
    param, values = candidates(kind, nlist, k)
    truth = truth_search(vectors, k + 1)
    tried: dict[str, float] = {}
    value, recall = values[-1], 0.0
    for value in values:
        recall = held_out_recall(search(vectors, k + 1, value), truth, ids, k)
        tried[str(value)] = round(recall, 4)
        if recall >= target:
            break
    met = recall >= target
    record = {"target_recall": target, "recall": round(recall, 4), "param": param, "value": int(value), "k": k,
              "sample": len(ids), "met": bool(met), "tried": tried, "seconds": round(time.perf_counter() - started, 3)}
    if met:
        log.info("tuned %s: %s=%d gives held-out recall@%d %.3f >= %.3f (%d queries)", kind, param, value, k, recall,
                 target, len(ids))
    else:
        log.warning("tuned %s: no %s reaches recall@%d %.3f (best %.3f at %s=%d); using it", kind, param, k, target,
                    recall, param, value)
    return record


def exhaustive_hnsw(inner: faiss.IndexHNSWFlat) -> Any:
    """Exact search over an HNSW index's flat storage (rows = the id map's positions)."""
    storage = faiss.downcast_index(inner.storage)
    n, d = int(storage.ntotal), int(storage.d)
    xb = faiss.rev_swig_ptr(storage.get_xb(), n * d).reshape(n, d)
    return lambda q, kk: faiss.knn(q, xb, min(kk, n), metric=faiss.METRIC_INNER_PRODUCT)[1]
