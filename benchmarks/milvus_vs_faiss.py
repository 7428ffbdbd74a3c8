"""Gallery search, FAISS (in process) vs Milvus Lite (embedded Milvus): latency at batch 1 and 64, recall@10.

``python -m benchmarks.milvus_vs_faiss [--sizes 10000,100000] [--kinds flat,ivf_flat] [--quick]``

Both backends are driven through the same public ``index.Gallery`` API a server uses (``add`` in
chunks, then ``save``, which for Milvus flushes the collection so its segments are sealed and indexed),
so the numbers include everything a caller pays: for Milvus, the gRPC round trip to the embedded server
and its per-hit result assembly. Kinds: ``flat`` (exact; Milvus ``FLAT``) and ``ivf_flat`` (the same
nlist and nprobe on both). HNSW is left out by default: its build at 1e5 takes minutes per backend
(``benchmarks/results/search.md``).

Also measured: batch-1 latency with a camera filter matching a quarter of the gallery (FAISS: an id
selector from the SQLite metadata; Milvus: the expression ``camera in [1]`` inside the search).

Data: the clustered descriptors of :mod:`benchmarks._search_data` (N/10 centres, unit noise, normalised),
queries around the same centres; recall@10 against exact numpy top-10 over the batch-64 queries.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _machine
from benchmarks._search_data import clustered
from benchmarks.search import exact_top_k
from index import Gallery

log = logging.getLogger(__name__)

K = 10
BACKENDS = ("faiss", "milvus")
KINDS = ("flat", "ivf_flat", "hnsw")
LIBRARIES = (*_machine.DEFAULT_LIBRARIES, "pymilvus", "milvus-lite", "grpcio")
NOTE = """## Reading these numbers

* Milvus Lite 3.x is a pure-Python embedded engine behind a local gRPC server. Every search call makes
  per-row Python passes over the collection (tombstone / deduplication masks), so batch-1 latency grows
  with N (the `b1_ms_p50` column) and batching amortises it; its exact batch-64
  search is one numpy GEMM per segment, as fast as FAISS's `IndexFlatIP` only once FAISS's BLAS threshold
  is set (the gallery's `flat` sets it: `index.faiss_config`; its default leaves batches < 84 queries on a
  per-query scan, the "before" row of `search.md`).
* Its IVF builds one index per sealed segment (nlist each), so at equal nlist/nprobe it scans more and
  recalls more than the single FAISS IVF.
* A camera filter makes Milvus Lite faster (fewer rows reach the vector search); FAISS exact search
  also gains (selector), FAISS IVF pays for the id selector.
* Milvus Lite stands in for a Milvus server in tests and on a laptop; these rows do not predict a Milvus
  server's (C++) latency. Run this script with a server uri to measure one (see docs/scaling.md).
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _machine.benchmark_parser("milvus_vs_faiss", __doc__)
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=1536, help="descriptor size (6 parts x 256 in the paper)")
    parser.add_argument("--kinds", default="flat,ivf_flat", help=f"index kinds, from {', '.join(KINDS)}")
    parser.add_argument("--b1-queries", type=int, default=30, help="batch-1 searches timed per row")
    parser.add_argument("--b64-batches", type=int, default=2, help="batch-64 searches timed (and used for recall)")
    parser.add_argument("--quick", action="store_true", help="one size (2000), few queries: a ~1 minute check")
    parser.add_argument("--milvus-uri", default=None,
                        help="measure a Milvus server (http://host:19530) instead of Milvus Lite files; the "
                             "benchmark's collections are dropped afterwards")
    parser.add_argument("--seed", type=int, default=0)
    _machine.add_output_args(parser, "milvus_vs_faiss")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
    if args.quick:
        args.sizes, args.b1_queries, args.b64_batches = [2000], min(args.b1_queries, 10), 1
    if not args.sizes or min(args.sizes) < 256 or args.dim < 1 or args.b1_queries < 1 or args.b64_batches < 1:
        parser.error("sizes must be >= 256, and --dim, --b1-queries, --b64-batches positive")
    return args


def _options(backend: str, kind: str, n: int) -> dict[str, Any]:
    """The same index parameters on both sides: nlist ~ 2 sqrt(N) (the FAISS default), nprobe 16."""
    if kind == "ivf_flat":
        nlist = max(1, min(round(2 * math.sqrt(n)), n // 39))
        return {"nlist": nlist, "nprobe": 16, **({"train_size": n} if backend == "faiss" else {})}
    if kind == "hnsw":
        return {"hnsw_m": 32, "ef_construction": 40, "ef_search": 64}
    return {}


def bench_row(backend: str, kind: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray, cameras: list[dict],
              workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, d = x.shape
    lite = args.milvus_uri is None
    extra = {"backend": "milvus", "uri": workdir / f"{kind}_{n}.db" if lite else args.milvus_uri,
             "collection": f"xmreid_bench_{kind}_{n}_{os.getpid()}"} if backend == "milvus" else {}
    options = _options(backend, kind, n)
    start = time.perf_counter()
    gallery = Gallery.create(d, kind, **options, **extra)
    for lo in range(0, n, 10_000):  # in chunks, as the indexing job adds batches
        gallery.add(x[lo:lo + 10_000], cameras[lo:lo + 10_000])
    insert_s = time.perf_counter() - start
    gallery.save(workdir / f"{backend}_{kind}_{n}")  # Milvus: flush, i.e. seal the segments and build their index
    build_s = time.perf_counter() - start
    singles = itertools.cycle(q)
    b1 = _machine.summarize(_machine.time_calls(lambda: gallery.search(next(singles), K), repeat=args.b1_queries,
                                                warmup=2))
    b1f = _machine.summarize(_machine.time_calls(lambda: gallery.search(next(singles), K, cameras=[1]),
                                                 repeat=args.b1_queries, warmup=1))
    batches = [q[i * 64:(i + 1) * 64] for i in range(args.b64_batches)]
    gallery.search(batches[0], K)  # warm-up
    found, b64_samples = [], []
    for batch in batches:
        t0 = time.perf_counter()
        found.append(gallery.search(batch, K)[1])
        b64_samples.append(time.perf_counter() - t0)
    found_ids = np.concatenate(found)
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found_ids, truth)]))
    b64 = _machine.summarize(b64_samples)
    name = ("milvus-lite" if lite else "milvus") if backend == "milvus" else "faiss"
    row = {"size": n, "backend": name, "kind": kind,
           "b1_ms_p50": b1["p50_ms"], "b1_ms_p95": b1["p95_ms"], "b1_filtered_ms_p50": b1f["p50_ms"],
           "b64_ms_per_query": b64["p50_ms"] / 64, "recall_at_10": recall, "insert_s": insert_s,
           "build_s": build_s, "options": ", ".join(f"{k}={v}" for k, v in options.items() if k != "train_size")}
    if backend == "milvus":
        gallery.drop_collection()
        gallery.close()
        if lite:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(str(extra["uri"]))
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    rows = []
    n_queries = 64 * args.b64_batches
    plan = [(n, kind, backend) for n in args.sizes for kind in args.kinds for backend in BACKENDS]
    progress = tqdm(total=len(plan), desc="milvus vs faiss", disable=args.no_progress)
    workdir = Path(tempfile.mkdtemp(prefix="milvus_vs_faiss_"))
    try:
        for n in args.sizes:
            x, q = clustered(n, args.dim, n_queries, args.seed)  # normalised, as exact_top_k expects
            truth = exact_top_k(x, q, K)
            cameras = [{"camera": 1 + i % 4} for i in range(n)]
            for kind in args.kinds:
                for backend in BACKENDS:
                    progress.set_postfix_str(f"{backend} {kind} N={n}")
                    rows.append(bench_row(backend, kind, x, q, truth, cameras, workdir, args))
                    log.info("%s", rows[-1])
                    progress.update()
                    gc.collect()
            del x, q
            gc.collect()
    finally:
        progress.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"rows": rows, "k": K, "dim": args.dim, "queries_b1": args.b1_queries, "queries_b64": n_queries,
            "data": "clustered: N/10 centres, unit noise", "filter": "camera in [1] (a quarter of the gallery)"}


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    table = _machine.markdown_table(rows, ["size", "backend", "kind", "b1_ms_p50", "b1_ms_p95", "b1_filtered_ms_p50",
                                           "b64_ms_per_query", "recall_at_10", "insert_s", "build_s", "options"])
    ratios = []
    for faiss_row in (r for r in rows if r["backend"] == "faiss"):
        other = next((r for r in rows if r["backend"] != "faiss" and r["size"] == faiss_row["size"]
                      and r["kind"] == faiss_row["kind"]), None)
        if other:
            ratios.append({"size": faiss_row["size"], "kind": faiss_row["kind"],
                           "b1 milvus/faiss": other["b1_ms_p50"] / faiss_row["b1_ms_p50"],
                           "b64 milvus/faiss": other["b64_ms_per_query"] / faiss_row["b64_ms_per_query"],
                           "insert milvus/faiss": other["insert_s"] / max(faiss_row["insert_s"], 1e-9)})
    return (f"Top-{results['k']} cosine search over {results['dim']}-d descriptors ({results['data']}) through "
            f"`index.Gallery`; batch 1: {results['queries_b1']} single-query searches (p50/p95) without and with "
            f"a filter ({results['filter']}); batch 64: {results['queries_b64'] // 64} batch(es) (p50, per query); "
            f"recall@10 against exact numpy top-10 over the {results['queries_b64']} batch-64 queries. "
            f"insert_s: `add` in chunks of 10,000; build_s adds `save` (Milvus: flush, segment sealing and "
            f"index build).\n\n{table}\n\n## Ratios (same run, same machine)\n\n{_machine.markdown_table(ratios)}\n"
            f"\n{NOTE}\n")


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    rows = results["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels = [f"{r['backend']}\n{r['kind']} N={r['size']:.0e}" for r in rows]
    pos = np.arange(len(rows))
    left.bar(pos - 0.27, [r["b1_ms_p50"] for r in rows], 0.27, label="batch 1 (p50)")
    left.bar(pos, [r["b1_filtered_ms_p50"] for r in rows], 0.27, label="batch 1, camera filter (p50)")
    left.bar(pos + 0.27, [r["b64_ms_per_query"] for r in rows], 0.27, label="batch 64 (per query)")
    left.set_xticks(pos, labels, rotation=60, fontsize=7)
    left.set_yscale("log")
    left.set_ylabel("ms per query")
    left.set_title("FAISS vs Milvus Lite: search latency")
    left.legend(fontsize=7)
    for r in rows:
        right.scatter(r["b64_ms_per_query"], r["recall_at_10"], marker="o" if r["backend"] == "faiss" else "^")
        right.annotate(f"{r['backend']} {r['kind']} {r['size']:.0e}", (r["b64_ms_per_query"], r["recall_at_10"]),
                       fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("ms per query at batch 64")
    right.set_ylabel("recall@10 vs exact")
    right.set_title("recall / speed (o FAISS, ^ Milvus Lite)")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake."""
    return _machine.run_and_write(parse_args(argv), run, report, plot, libraries=LIBRARIES)


if __name__ == "__main__":
    raise SystemExit(main())
