"""The exact-search half of ``benchmarks/search.py``: ceilings, side-by-side rows and the owner's targets.

Everything here is measured in one process on one gallery (``N x dim`` normalised float32), in this
order: the machine's read bandwidth and GEMM rate (the ceilings), FAISS's two exact paths at batch
1..64 (the sweep behind ``index.faiss_config.BLAS_MIN_QUERIES``), then each row at batch 1 and 64:

* ``numpy GEMM + argpartition``: the reference line (``q @ x.T``, then a partial sort);
* ``FAISS IndexFlatIP, default threshold``: FAISS's default BLAS threshold (128,000), what ``flat`` used before
  ``index.faiss_config`` set its own;
* ``Gallery flat``, ``Gallery flat_fp16``: the exact kinds as ``index`` configures them;
* ``Gallery flat, filter ...``: camera filters of 50 % and 5 % of the gallery, ``filter_mode=auto``,
  and the 50 % one with ``filter_mode=selector`` (FAISS's ``IDSelector``: the path auto avoids).

GB/s (batch 1) is the bytes of stored vectors (``N * dim * 4``, or ``* 2`` for fp16) per ms/query;
GFLOP/s (batch 64) is ``2 * dim * N`` per ms/query. Filtered rows show time only, and the ratio to the
unfiltered ``Gallery flat`` row.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faiss
import numpy as np

from benchmarks import _machine
from index import Gallery, faiss_config

K = 10
# The owner's exact-search targets, per machine class (only the CPU one exists so far).
TARGETS: dict[str, dict[str, float]] = {
    "cpu": {"b64_vs_gemm_min": 0.9, "b1_vs_bandwidth_max": 1.25, "fp16_b1_speedup_min": 1.6,
            "filtered_b64_vs_unfiltered_max": 1.5},
}
COVERAGES = {1: 0.50, 2: 0.05}  # camera -> share of the gallery (the rest is camera 3)


def normalised_data(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors (:func:`benchmarks._search_data.clustered`), queries, and a camera per item."""
    from benchmarks._search_data import clustered

    x, q = clustered(n, dim, n_queries, seed)
    rng = np.random.default_rng(seed + 1)
    shares = [COVERAGES[1], COVERAGES[2], 1 - COVERAGES[1] - COVERAGES[2]]
    cameras = rng.choice([1, 2, 3], size=n, p=shares)
    return x, q, cameras


def read_bandwidth(x: np.ndarray, threads: int, repeat: int = 5) -> dict[str, float]:
    """GB/s of a plain read of ``x`` (``sum``), on one thread and split over ``threads`` (numpy drops the GIL)."""
    flat = x.reshape(-1)
    parts = np.array_split(flat, threads)
    pool = ThreadPoolExecutor(max_workers=threads)
    one = _machine.summarize(_machine.time_calls(lambda: flat.sum(), repeat=repeat))
    many = _machine.summarize(_machine.time_calls(lambda: list(pool.map(np.sum, parts)), repeat=repeat))
    pool.shutdown()
    gbps_1, gbps_t = x.nbytes / one["p50_ms"] / 1e6, x.nbytes / many["p50_ms"] / 1e6
    return {"read_gbps_1_thread": gbps_1, f"read_gbps_{threads}_threads": gbps_t, "read_gbps": max(gbps_1, gbps_t)}


def numpy_topk(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: scores by one BLAS call (GEMV for one query), then argpartition and a sort of k."""
    scores = (x @ q[0])[None, :] if len(q) == 1 else q @ x.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-part, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def threshold_sweep(x: np.ndarray, q: np.ndarray, batches: tuple[int, ...] = (1, 2, 3, 4, 8, 16, 64),
                    repeat: int = 3) -> list[dict[str, Any]]:
    """IndexFlatIP ms/query per batch size with FAISS's per-query scan and with its sgemm path."""
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    rows = []
    try:
        for b in batches:
            row: dict[str, Any] = {"batch": b}
            for path, threshold in (("scan", 2**31 - 1), ("sgemm", 1)):
                faiss.cvar.distance_compute_blas_threshold = threshold
                faiss.omp_set_num_threads(faiss_config.DEFAULT_THREADS)
                t = _machine.summarize(_machine.time_calls(lambda: index.search(q[:b], K), repeat=repeat))
                row[f"{path}_ms_per_query"] = t["p50_ms"] / b
            row["faster"] = "sgemm" if row["sgemm_ms_per_query"] < row["scan_ms_per_query"] else "scan"
            rows.append(row)
    finally:
        faiss_config.configure()
    return rows


def _time_search(search: Any, q: np.ndarray, batch: int, repeat: int) -> float:
    """p50 ms per query of ``search(queries)`` over ``repeat`` batches of ``batch`` (cycling through ``q``)."""
    starts = [(i * batch) % (len(q) - batch + 1) for i in range(repeat + 1)]
    search(q[starts[0]:starts[0] + batch])  # warm-up
    samples = []
    for s in starts[1:]:
        t0 = time.perf_counter()
        search(q[s:s + batch])
        samples.append(time.perf_counter() - t0)
    return _machine.summarize(samples)["p50_ms"] / batch


def _agreement(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / truth.shape[1]
                          for f, t in zip(found, truth)]))


def run_exact(x: np.ndarray, q: np.ndarray, cameras: np.ndarray, b1_queries: int, b64_batches: int,
              progress: Any = None) -> dict[str, Any]:
    """Every exact row at batch 1 and 64, the ceilings, the sweep and the target checks (module docstring)."""
    n, d = x.shape
    threads = faiss_config.DEFAULT_THREADS
    note = (lambda s: progress.set_postfix_str(s)) if progress is not None else (lambda s: None)
    note("ceilings")
    ceilings = read_bandwidth(x, threads)
    gemm = _machine.summarize(_machine.time_calls(lambda: q[:64] @ x.T, repeat=3))
    gemv = _machine.summarize(_machine.time_calls(lambda: x @ q[0], repeat=5))
    ceilings.update({"numpy_gemm_b64_gflops": 2 * 64 * d * n / gemm["p50_ms"] / 1e6,
                     "numpy_gemv_b1_gbps": x.nbytes / gemv["p50_ms"] / 1e6})
    # numpy's pairwise sum does not saturate the memory bus on every CPU (its GEMV can read faster):
    # the bound is the fastest read measured, so it is never one the code beats by measuring badly.
    ceilings["read_gbps"] = max(ceilings["read_gbps"], ceilings["numpy_gemv_b1_gbps"])
    note("threshold sweep")
    sweep = threshold_sweep(x, q)

    truth = numpy_topk(q, x, K)[1]
    rows: list[dict[str, Any]] = []

    def add(name: str, search: Any, bytes_per_row: int, ref: np.ndarray,
            batches: tuple[int, ...] = (1, 64)) -> dict[str, Any]:
        note(name)
        row: dict[str, Any] = {"row": name}
        for b in batches:
            row[f"b{b}_ms_per_query"] = _time_search(search, q, b, b1_queries if b == 1 else b64_batches)
        if bytes_per_row:  # filtered rows: only the time (their work depends on the path auto took)
            row["b1_gbps"] = n * bytes_per_row / row["b1_ms_per_query"] / 1e6
            row["b64_gflops"] = 2 * d * n / row["b64_ms_per_query"] / 1e6
        found = np.concatenate([search(q[i:i + 64])[1] for i in range(0, len(q), 64)])
        row["agreement_with_reference"] = _agreement(found, ref)
        rows.append(row)
        return row

    add("numpy GEMM + argpartition (reference)", lambda b: numpy_topk(b, x, K), 4 * d, truth)
    plain = faiss.IndexFlatIP(d)
    plain.add(x)

    def faiss_default(b: np.ndarray, index: Any = plain) -> tuple[np.ndarray, np.ndarray]:
        faiss.cvar.distance_compute_blas_threshold = 128_000
        try:
            return index.search(b, K)
        finally:
            faiss_config.configure()

    add("FAISS IndexFlatIP, default BLAS threshold (before)", faiss_default, 4 * d, truth)
    del plain, faiss_default  # frees the index before the galleries are built

    meta = [{"camera": int(c)} for c in cameras]
    galleries = {}
    for kind in ("flat", "flat_fp16"):
        note(f"build {kind}")
        g = Gallery.create(d, kind, device="cpu")
        for lo in range(0, n, 50_000):
            g.add(x[lo:lo + 50_000], meta[lo:lo + 50_000])
        galleries[kind] = g
        add(f"Gallery {kind}", lambda b, g=g: g.search(b, K), 4 * d if kind == "flat" else 2 * d, truth)
    flat = galleries["flat"]
    for camera, share in COVERAGES.items():
        allowed = np.flatnonzero(cameras == camera)
        ref = numpy_topk(q, x[allowed], K)[1]
        ref = allowed[ref]
        add(f"Gallery flat, filter {share:.0%} (auto)", lambda b, c=camera: flat.search(b, K, cameras=[c]), 0, ref)
    del galleries
    note("build flat, filter_mode=selector")
    selector = Gallery.create(d, "flat", device="cpu", filter_mode="selector")
    for lo in range(0, n, 50_000):
        selector.add(x[lo:lo + 50_000], meta[lo:lo + 50_000])
    allowed = np.flatnonzero(cameras == 1)
    ref = allowed[numpy_topk(q, x[allowed], K)[1]]
    add(f"Gallery flat, filter {COVERAGES[1]:.0%} (selector)", lambda b, g=selector: g.search(b, K, cameras=[1]),
        0, ref)
    del selector
    return {"n": n, "dim": d, "k": K, "threads": threads, "blas_threshold": faiss_config.BLAS_THRESHOLD,
            "ceilings": ceilings, "threshold_sweep": sweep, "rows": rows,
            "targets": check_targets(rows, ceilings, n, d)}


def check_targets(rows: list[dict[str, Any]], ceilings: dict[str, float], n: int, d: int) -> list[dict[str, Any]]:
    """The exact-search targets, each with the measured value and whether it is met."""
    by = {r["row"]: r for r in rows}
    limits = TARGETS["cpu"]
    bw = ceilings["read_gbps"]
    ref, flat, fp16 = by["numpy GEMM + argpartition (reference)"], by["Gallery flat"], by["Gallery flat_fp16"]
    bound32, bound16 = n * d * 4 / bw / 1e6, n * d * 2 / bw / 1e6  # ms: bytes / bandwidth

    def target(text: str, measured: float, limit: str, at_least: bool) -> dict[str, Any]:
        met = measured >= limits[limit] if at_least else measured <= limits[limit]
        return {"target": text, "measured": measured, "limit": limits[limit],
                "met": bool(met) and math.isfinite(measured)}

    out = [
        target("flat batch 64 >= 0.9x numpy GEMM speed", ref["b64_ms_per_query"] / flat["b64_ms_per_query"],
               "b64_vs_gemm_min", at_least=True),
        target("flat batch 1 <= 1.25x bytes / read bandwidth", flat["b1_ms_per_query"] / bound32,
               "b1_vs_bandwidth_max", at_least=False),
        target("flat_fp16 batch 1 <= 1.25x bytes / read bandwidth", fp16["b1_ms_per_query"] / bound16,
               "b1_vs_bandwidth_max", at_least=False),
        target("flat_fp16 batch 1 >= 1.6x faster than flat", flat["b1_ms_per_query"] / fp16["b1_ms_per_query"],
               "fp16_b1_speedup_min", at_least=True),
    ]
    for name, row in by.items():
        if name.startswith("Gallery flat, filter") and name.endswith("(auto)"):
            out.append(target(f"{name[len('Gallery flat, '):]} batch 64 <= 1.5x unfiltered",
                              row["b64_ms_per_query"] / flat["b64_ms_per_query"], "filtered_b64_vs_unfiltered_max",
                              at_least=False))
    return out
