"""Gallery search benchmark: ms/query at batch 1 and 64, and recall@10 against exact search.

``python -m benchmarks.search [--sizes 10000,100000] [--dim 1536] [--quick]``

For each gallery size it measures every index kind of :mod:`index` at its default options (CPU, and
also on the GPU when faiss-gpu sees one), and in the same run the hardware reference the kinds
should be judged against: a numpy/BLAS ``sgemm`` of the batch-64 shape ``[64, dim] x [dim, N]`` in
GFLOP/s and the matrix-vector product of batch 1 in GB/s. The exact kinds' effective GFLOP/s at
batch 64 (``2 * 64 * dim * N / time``) is set beside the sgemm number.

Data: random descriptors drawn around N/10 random centres (N(0,1) centres, N(0,1) noise: ~10
"images" per "identity", same-centre cosine ~0.5, others ~0), queries around the same centres.
Uniform noise would have no neighbourhoods, so approximate indexes would be measured on a problem
no gallery poses. Build time includes training. A kind whose estimated build time (extrapolated
from the previous size) exceeds ``--max-build-s`` is skipped and reported as such.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import time
from typing import Any

import faiss
import numpy as np

from benchmarks import _machine
from index import KINDS, Gallery
from index.gpu import gpu_count

log = logging.getLogger(__name__)

ORDER = ["flat", "flat_fp16", "flat_blas", "ivf_flat", "ivf_pq", "hnsw"]
GPU_KINDS = ["flat", "flat_fp16", "ivf_flat", "ivf_pq"]
EXACT = {"flat", "flat_fp16", "flat_blas"}
# How build time grows with N, to decide whether the next size fits the budget (measured on the
# 2-core reference machine, 1e4 -> 1e5: flat kinds ~N; IVF ~N^1.1, since training samples at most
# 64 points per centroid; HNSW ~N^1.4, insertion cost growing with the graph).
GROWTH = {"ivf_flat": 1.1, "ivf_pq": 1.1, "hnsw": 1.4}
K = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated")
    parser.add_argument("--dim", type=int, default=1536, help="descriptor size (6 parts x 256 in the paper)")
    parser.add_argument("--kinds", default=",".join(ORDER), help=f"index kinds, from {', '.join(KINDS)}")
    parser.add_argument("--b1-queries", type=int, default=50, help="batch-1 searches timed per kind")
    parser.add_argument("--b64-batches", type=int, default=4, help="batch-64 searches timed (and used for recall)")
    parser.add_argument("--max-build-s", type=float, default=300.0, help="skip a kind whose build would take longer")
    parser.add_argument("--quick", action="store_true", help="one size (10000), fewer queries: a ~1 minute check")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--name", default="search", help="results file stem")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
        args.sizes = [min(args.sizes)] if args.sizes != [10000, 100000] else [10000]
        args.b1_queries, args.b64_batches = min(args.b1_queries, 20), min(args.b64_batches, 2)
    if not args.sizes or min(args.sizes) < 64 or args.dim < 1 or args.b1_queries < 1 or args.b64_batches < 1:
        parser.error("sizes must be >= 64, and --dim, --b1-queries, --b64-batches positive")
    return args


def make_data(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered descriptors and queries (see the module docstring), float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 10), dim), dtype=np.float32)
    x = centres[rng.integers(0, len(centres), n)]
    x += rng.standard_normal((n, dim), dtype=np.float32)
    q = centres[rng.integers(0, len(centres), n_queries)]
    q += rng.standard_normal((n_queries, dim), dtype=np.float32)
    return x, q


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Reference top-k ids by cosine, straight numpy (blocked over the gallery)."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    scores = qn @ xn.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def hardware_reference(x: np.ndarray, q64: np.ndarray, repeat: int) -> dict[str, float]:
    """sgemm ``[64, d] x [d, N]`` GFLOP/s and batch-1 gemv GB/s on this machine, right now."""
    n, d = x.shape
    gemm = _machine.summarize(_machine.time_calls(lambda: q64 @ x.T, repeat=repeat, warmup=1))
    gemv = _machine.summarize(_machine.time_calls(lambda: q64[:1] @ x.T, repeat=max(repeat, 5), warmup=1))
    return {"sgemm_b64_ms": gemm["p50_ms"], "sgemm_gflops": 2 * 64 * d * n / gemm["p50_ms"] / 1e6,
            "gemv_b1_ms": gemv["p50_ms"], "gemv_gbps": n * d * 4 / gemv["p50_ms"] / 1e6}


def bench_kind(kind: str, device: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray,
               args: argparse.Namespace) -> dict[str, Any]:
    n, d = x.shape
    metadata = [{"camera": 1}] * n
    start = time.perf_counter()
    gallery = Gallery.create(d, kind, device=device)
    for lo in range(0, n, 50_000):  # add in chunks, as the indexing job does
        gallery.add(x[lo:lo + 50_000], metadata[lo:lo + 50_000])
    build_s = time.perf_counter() - start
    singles = itertools.cycle(q)
    b1_samples = _machine.time_calls(lambda: gallery.search(next(singles), K), repeat=args.b1_queries)
    found = []
    batches = [q[i * 64:(i + 1) * 64] for i in range(args.b64_batches)]
    gallery.search(batches[0], K)  # warm-up
    b64_samples = []
    for batch in batches:
        t0 = time.perf_counter()
        _, ids = gallery.search(batch, K)
        b64_samples.append(time.perf_counter() - t0)
        found.append(ids)
    found_ids = np.concatenate(found)
    recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found_ids, truth)]))
    b1s, b64s = _machine.summarize(b1_samples), _machine.summarize(b64_samples)
    stats = gallery.stats()
    row = {"size": n, "kind": kind, "device": stats["device"], "build_s": build_s,
           "b1_ms_p50": b1s["p50_ms"], "b1_ms_p95": b1s["p95_ms"],
           "b64_ms_per_query": b64s["p50_ms"] / 64, "b64_batch_ms_p50": b64s["p50_ms"],
           "recall_at_10": recall, "approx_mb": stats["approx_bytes"] / 2**20,
           "options": ", ".join(f"{k}={v}" for k, v in stats["options"].items() if k != "train_size")}
    if kind in EXACT:
        row["b64_gflops"] = 2 * 64 * d * n / b64s["p50_ms"] / 1e6
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    devices = ["cpu"] + (["gpu"] if gpu_count() > 0 else [])
    plan = [(n, kind, dev) for n in args.sizes for dev in devices for kind in args.kinds
            if dev == "cpu" or kind in GPU_KINDS]
    rows, references, skipped = [], [], []
    last_build: dict[tuple[str, str], tuple[int, float]] = {}
    n_queries = 64 * args.b64_batches
    progress = tqdm(total=len(plan), desc="search benchmark", disable=args.no_progress)
    for n in args.sizes:
        x, q = make_data(n, args.dim, n_queries, args.seed)
        truth = exact_top_k(x, q, K)
        references.append({"size": n, **hardware_reference(x, q[:64], repeat=3)})
        for dev in devices:
            for kind in args.kinds:
                if dev == "gpu" and kind not in GPU_KINDS:
                    continue
                progress.set_postfix_str(f"{kind}/{dev} N={n}")
                previous = last_build.get((kind, dev))
                if previous is not None:
                    estimate = previous[1] * (n / previous[0]) ** GROWTH.get(kind, 1.0)
                    if estimate > args.max_build_s:
                        skipped.append({"size": n, "kind": kind, "device": dev, "estimated_build_s": estimate})
                        progress.update()
                        continue
                row = bench_kind(kind, dev, x, q, truth, args)
                last_build[(kind, dev)] = (n, row["build_s"])
                rows.append(row)
                progress.update()
                gc.collect()
        del x, q
        gc.collect()
    progress.close()
    return {"rows": rows, "hardware_reference": references, "skipped": skipped, "k": K, "dim": args.dim,
            "faiss_threads": faiss.omp_get_max_threads(), "queries_b1": args.b1_queries,
            "queries_b64": n_queries, "data": "clustered: N/10 centres, unit noise"}


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    table = _machine.markdown_table(rows, ["size", "kind", "device", "b1_ms_p50", "b1_ms_p95", "b64_ms_per_query",
                                           "b64_gflops", "recall_at_10", "build_s", "approx_mb", "options"])
    ref_rows = []
    for ref in results["hardware_reference"]:
        by_kind = {r["kind"]: r for r in rows if r["size"] == ref["size"] and r["device"] == "cpu"}
        ref_rows.append({"size": ref["size"], "numpy sgemm GFLOP/s": ref["sgemm_gflops"],
                         "IndexFlatIP GFLOP/s": by_kind.get("flat", {}).get("b64_gflops"),
                         "flat_blas GFLOP/s": by_kind.get("flat_blas", {}).get("b64_gflops"),
                         "numpy gemv GB/s (batch 1)": ref["gemv_gbps"]})
    skipped = "".join(f"\n- {s['kind']} ({s['device']}) at N={s['size']}: skipped, estimated build "
                      f"{s['estimated_build_s']:.0f} s > --max-build-s" for s in results["skipped"])
    return (f"Top-{results['k']} cosine search over {results['dim']}-d descriptors ({results['data']}); "
            f"batch 1: {results['queries_b1']} single-query searches (p50/p95), batch 64: "
            f"{results['queries_b64'] // 64} batches (p50 per query); recall@10 against exact numpy top-10 "
            f"over the same {results['queries_b64']} queries. FAISS threads: {results['faiss_threads']}.\n\n"
            f"{table}\n\n## Hardware reference (same run)\n\n{_machine.markdown_table(ref_rows)}\n"
            f"{skipped}\n")


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    rows = results["rows"]
    labels = [f"{r['kind']}{'/gpu' if r['device'] == 'gpu' else ''}\nN={r['size']:.0e}" for r in rows]
    pos = np.arange(len(rows))
    left.bar(pos - 0.2, [r["b1_ms_p50"] for r in rows], 0.4, label="batch 1 (p50)")
    left.bar(pos + 0.2, [r["b64_ms_per_query"] for r in rows], 0.4, label="batch 64 (per query)")
    left.set_xticks(pos, labels, rotation=60, fontsize=7)
    left.set_yscale("log")
    left.set_ylabel("ms per query")
    left.legend()
    left.set_title("search latency")
    for r in rows:
        right.scatter(r["b64_ms_per_query"], r["recall_at_10"], marker="o" if r["size"] == min(results_sizes(rows)) else "s")
        right.annotate(f"{r['kind']} {r['size']:.0e}", (r["b64_ms_per_query"], r["recall_at_10"]), fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("ms per query at batch 64")
    right.set_ylabel("recall@10 vs exact")
    right.set_title("recall / speed")
    fig.tight_layout()
    return fig


def results_sizes(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({r["size"] for r in rows})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = _machine.describe_machine()
    results = run(args)
    paths = _machine.write_results(args.name, results, report(results), plot(results), out_dir=args.out,
                                   machine=machine)
    print(report(results))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
