"""Gallery search benchmark: exact search beside the machine's ceilings, then the approximate kinds.

``python -m benchmarks.search [--size 100000] [--dim 1536] [--approx-sizes 10000,100000] [--quick]``

Part 1 (:mod:`benchmarks._search_exact`), on one ``--size x --dim`` gallery of normalised float32:
the read bandwidth (a large-array ``sum`` on 1 and on all threads) and numpy's GEMM rate, measured
in the same run; FAISS's per-query scan against its sgemm path at batch 1..64 (the sweep behind
``index.faiss_config``); then side by side at batch 1 and 64, in ms/query with GB/s and GFLOP/s:
the numpy GEMM + argpartition reference, FAISS's IndexFlatIP at its default BLAS threshold (what
``flat`` was), ``Gallery`` kinds ``flat`` and ``flat_fp16``, and camera-filtered ``flat`` searches
(50 % and 5 % of the gallery; ``filter_mode`` auto, and selector for comparison), with the owner's
targets checked.

Part 2: every approximate kind (``--kinds``) at each of ``--approx-sizes``, ms/query at batch 1
and 64 and recall@10 against exact numpy top-10; with ``--target-recall R`` each is tuned after its
build (``Gallery.tune``: the cheapest ``nprobe`` / ``ef_search`` whose recall@10 on 1,000 held-out
gallery items reaches R), and the tuned recall is checked on the benchmark's own queries. A kind whose
estimated build time (extrapolated from the previous size) exceeds ``--max-build-s`` is skipped and reported
as such.

Data (``--data``, :mod:`benchmarks._search_data`; each approximate row names its kind): ``clustered``
(N/10 random centres + unit noise, ~10 "crops" per "identity"), ``gaussian`` (i.i.d. on the sphere:
no neighbourhoods at all, the worst case), and ``model`` (identities and crops drawn from the
between- and within-identity covariance of the trained model's descriptors of ``--images``, with
``--model``). IVF kinds are trained on a sample sized for N (``Gallery.train(sample,
expected_size=N)``, as a batch job that knows its image count does). Every row also times exact
batch-1 search over the same N (numpy GEMV + argpartition over the same normalised array: the
batch-1 path of ``flat``) and reports the speed-up. Build time includes training.
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

from benchmarks import _machine, _search_data, _search_exact
from index import KINDS, Gallery
from index.gpu import gpu_count

log = logging.getLogger(__name__)

ORDER = ["ivf_flat", "ivf_pq", "hnsw"]
GPU_KINDS = ["flat", "flat_fp16", "ivf_flat", "ivf_pq"]
EXACT = {"flat", "flat_fp16"}
# How build time grows with N, to decide whether the next size fits the budget (measured on the
# 2-core reference machine, 1e4 -> 1e5: flat kinds ~N; IVF ~N^1.1, since training samples at most
# 64 points per centroid; HNSW ~N^1.4, insertion cost growing with the graph).
GROWTH = {"ivf_flat": 1.1, "ivf_pq": 1.1, "hnsw": 1.4}
K = 10


def _sizes(text: str, parser: argparse.ArgumentParser, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"{flag} must be comma-separated integers, got {text!r}")
        raise  # unreachable: parser.error exits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _machine.benchmark_parser("search", __doc__)
    parser.add_argument("--size", type=int, default=100_000, help="gallery size of the exact-search part")
    parser.add_argument("--dim", type=int, default=1536, help="descriptor size (6 parts x 256 in the paper)")
    parser.add_argument("--approx-sizes", default="10000,100000",
                        help="gallery sizes of the approximate part, comma-separated ('' skips it)")
    parser.add_argument("--kinds", default=",".join(ORDER), help=f"approximate kinds, from {', '.join(KINDS)}")
    parser.add_argument("--b1-queries", type=int, default=30, help="batch-1 searches timed per row")
    parser.add_argument("--b64-batches", type=int, default=4, help="batch-64 searches timed (and used for recall)")
    parser.add_argument("--max-build-s", type=float, default=300.0, help="skip a kind whose build would take longer")
    parser.add_argument("--target-recall", type=float, default=None,
                        help="tune each approximate kind to this held-out recall@10 after building (Gallery.tune)")
    parser.add_argument("--data", default="clustered",
                        help="data kinds of the approximate part, comma-separated, from "
                             f"{', '.join(_search_data.KINDS)}")
    parser.add_argument("--model", default=None, help="ONNX model whose descriptors shape --data model")
    parser.add_argument("--images", default=None, help="SYSU-layout image folder embedded for --data model")
    parser.add_argument("--quick", action="store_true", help="10,000 items, fewer queries: a ~1 minute check")
    parser.add_argument("--seed", type=int, default=0)
    _machine.add_output_args(parser, "search")
    args = parser.parse_args(argv)
    args.approx_sizes = _sizes(args.approx_sizes, parser, "--approx-sizes")
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
    args.data = [k.strip() for k in args.data.split(",") if k.strip()]
    bad = [k for k in args.data if k not in _search_data.KINDS]
    if bad or not args.data:
        parser.error(f"unknown data kind(s) {bad}; valid: {', '.join(_search_data.KINDS)}")
    if "model" in args.data and not (args.model and args.images):
        parser.error("--data model needs --model MODEL.onnx and --images DIR (a SYSU-layout synthetic dataset)")
    if args.quick:
        args.size, args.approx_sizes = min(args.size, 10_000), [n for n in args.approx_sizes if n <= 10_000][:1]
        args.b1_queries, args.b64_batches = min(args.b1_queries, 10), min(args.b64_batches, 2)
    if (args.size < 64 or (args.approx_sizes and min(args.approx_sizes) < 64) or args.dim < 1
            or args.b1_queries < 1 or args.b64_batches < 1):
        parser.error("sizes must be >= 64, and --dim, --b1-queries, --b64-batches positive")
    return args


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int, batch: int = 256) -> np.ndarray:
    """Reference top-k ids of normalised ``q`` over normalised ``x``, straight numpy, in query batches."""
    return np.concatenate([_search_exact.numpy_topk(q[i:i + batch], x, k)[1] for i in range(0, len(q), batch)])


def exact_b1_ms(x: np.ndarray, q: np.ndarray, repeat: int) -> float:
    """p50 ms of one-query exact search over ``x`` (numpy GEMV + argpartition: ``flat``'s batch-1 path)."""
    singles = itertools.cycle(q)
    samples = _machine.time_calls(lambda: _search_exact.numpy_topk(next(singles)[None, :], x, K), repeat=repeat)
    return _machine.summarize(samples)["p50_ms"]


def bench_kind(kind: str, device: str, x: np.ndarray, q: np.ndarray, truth: np.ndarray,
               args: argparse.Namespace, exact_ms: float) -> dict[str, Any]:
    n, d = x.shape
    metadata = [{"camera": 1}] * n
    start = time.perf_counter()
    gallery = Gallery.create(d, kind, device=device)
    if kind in ("ivf_flat", "ivf_pq"):
        # sized for N: ~2·sqrt(N) lists, 64 sampled points each (index.faiss_backend.auto_nlist)
        sample = np.random.default_rng(args.seed).choice(n, size=min(n, 128 * int(np.sqrt(n))), replace=False)
        gallery.train(x[np.sort(sample)], expected_size=n)
    for lo in range(0, n, 50_000):  # add in chunks, as the indexing job does
        gallery.add(x[lo:lo + 50_000], metadata[lo:lo + 50_000])
    build_s = time.perf_counter() - start
    # untrained IVF searches exactly; ivf_pq cannot be tuned from its own codes (index.tuning)
    tune = args.target_recall is not None and gallery.stats()["trained"] and kind != "ivf_pq"
    tuned = gallery.tune(args.target_recall) if tune else None
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
    tuning = {} if tuned is None else {"target_recall": tuned["target_recall"], "held_out_recall": tuned["recall"],
                                       "tune_s": tuned["seconds"]}
    return {"size": n, "kind": kind, "device": stats["device"], "build_s": build_s, **tuning,
            "exact_b1_ms": exact_ms, "speedup_b1": exact_ms / b1s["p50_ms"], "b1_ms_p50": b1s["p50_ms"],
            "b1_ms_p95": b1s["p95_ms"], "b64_ms_per_query": b64s["p50_ms"] / 64, "recall_at_10": recall,
            "approx_mb": stats["approx_bytes"] / 2**20,
            "options": ", ".join(f"{k}={v}" for k, v in stats["options"].items() if k != "train_size")}


def _make(data: str, n: int, args: argparse.Namespace,
          stats: _search_data.ModelStats | None) -> tuple[np.ndarray, np.ndarray]:
    nq = 64 * args.b64_batches
    if data == "model":
        return _search_data.model_shaped(n, nq, args.seed, stats)
    return getattr(_search_data, data)(n, args.dim, nq, args.seed)


def run_approx(args: argparse.Namespace,
               progress: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    """Part 2: the approximate kinds at each size (and on the GPU when faiss-gpu sees one)."""
    devices = ["cpu"] + (["gpu"] if gpu_count() > 0 else [])
    rows, skipped = [], []
    last_build: dict[tuple[str, str, str], tuple[int, float]] = {}
    stats = _search_data.fit_model_stats(args.model, args.images) if "model" in args.data else None
    for data in args.data:
        for n in args.approx_sizes:
            progress.set_postfix_str(f"{data} data N={n}")
            x, q = _make(data, n, args, stats)
            truth = exact_top_k(x, q, K)
            exact_ms = exact_b1_ms(x, q, args.b1_queries)
            for dev in devices:
                for kind in args.kinds:
                    if dev == "gpu" and kind not in GPU_KINDS:
                        continue
                    progress.set_postfix_str(f"{kind}/{dev} {data} N={n}")
                    previous = last_build.get((data, kind, dev))
                    if previous is not None:
                        estimate = previous[1] * (n / previous[0]) ** GROWTH.get(kind, 1.0)
                        if estimate > args.max_build_s:
                            skipped.append({"data": data, "size": n, "kind": kind, "device": dev,
                                            "estimated_build_s": estimate})
                            progress.update()
                            continue
                    row = {"data": data, **bench_kind(kind, dev, x, q, truth, args, exact_ms)}
                    last_build[(data, kind, dev)] = (n, row["build_s"])
                    rows.append(row)
                    progress.update()
                    gc.collect()
            del x, q
            gc.collect()
    described = {"clustered": "N/10 N(0,1) centres + N(0,1) noise per item, normalised",
                 "gaussian": "i.i.d. N(0,1) per dimension, normalised (uniform on the sphere)"}
    if stats is not None:
        described["model"] = stats.describe()
    return rows, skipped, {d: described[d] for d in args.data}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    devices = 1 + (gpu_count() > 0)
    total = 1 + len(args.data) * len(args.approx_sizes) * len(args.kinds) * devices
    progress = tqdm(total=total, desc="search benchmark", disable=args.no_progress)
    x, q, cameras = _search_exact.normalised_data(args.size, args.dim, 64 * args.b64_batches, args.seed)
    exact = _search_exact.run_exact(x, q, cameras, args.b1_queries, args.b64_batches, progress)
    progress.update()
    del x, q, cameras
    gc.collect()
    rows, skipped, data = run_approx(args, progress)
    progress.close()
    return {"exact": exact, "rows": rows, "skipped": skipped, "k": K, "dim": args.dim,
            "faiss_threads": faiss.omp_get_max_threads(), "queries_b1": args.b1_queries,
            "queries_b64": 64 * args.b64_batches, "data": data}


def readme_table(results: dict[str, Any]) -> str:
    """The README's search table: every exact row, ms/query at batch 1 and 64 with GB/s and GFLOP/s."""
    ex = results["exact"]
    lines = ["| exact search | batch 1, ms/query | batch 64, ms/query |", "|---|---|---|"]
    for r in ex["rows"]:
        b1 = f"{r['b1_ms_per_query']:.3g}" + (f" ({r['b1_gbps']:.3g} GB/s)" if "b1_gbps" in r else "")
        b64 = f"{r['b64_ms_per_query']:.3g}" + (f" ({r['b64_gflops']:.3g} GFLOP/s)" if "b64_gflops" in r else "")
        lines.append(f"| {r['row']} | {b1} | {b64} |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    ex = results["exact"]
    c = ex["ceilings"]
    threads = ex["threads"]
    n, d = ex["n"], ex["dim"]
    bound32, bound16 = n * d * 4 / c["read_gbps"] / 1e6, n * d * 2 / c["read_gbps"] / 1e6
    exact_rows = [{**r, "agreement_with_reference": r["agreement_with_reference"]} for r in ex["rows"]]
    flat = next(r for r in ex["rows"] if r["row"] == "Gallery flat")
    for r in exact_rows:
        r["b64_vs_gallery_flat"] = r["b64_ms_per_query"] / flat["b64_ms_per_query"]
    ceilings = [{"read GB/s, 1 thread": c["read_gbps_1_thread"], f"read GB/s, {threads} threads":
                 c[f"read_gbps_{threads}_threads"], "numpy GEMV GB/s (batch 1)": c["numpy_gemv_b1_gbps"],
                 "numpy GEMM GFLOP/s (batch 64)": c["numpy_gemm_b64_gflops"],
                 "fp32 bound ms (bytes / read GB/s)": bound32, "fp16 bound ms": bound16}]
    targets = [{**t, "met": "yes" if t["met"] else "**no**"} for t in ex["targets"]]
    sweep = _machine.markdown_table(ex["threshold_sweep"], ["batch", "scan_ms_per_query", "sgemm_ms_per_query",
                                                             "faster"])
    approx = _machine.markdown_table(results["rows"], ["data", "size", "kind", "device", "b1_ms_p50", "b1_ms_p95",
                                                       "exact_b1_ms", "speedup_b1",
                                                       "b64_ms_per_query", "recall_at_10", "target_recall",
                                                       "held_out_recall", "build_s", "tune_s", "approx_mb",
                                                       "options"]) if results["rows"] else "(not run)"
    skipped = "".join(f"\n- {s['kind']} ({s['device']}, {s.get('data', 'clustered')} data) at N={s['size']}: "
                      f"skipped, estimated build {s['estimated_build_s']:.0f} s > --max-build-s"
                      for s in results["skipped"])
    data = results["data"] if isinstance(results["data"], dict) else {"clustered": results["data"]}
    described = "".join(f"\n- `{name}`: {text}" for name, text in data.items())
    approx_targets = approx_target_rows(results["rows"])
    approx_targets_md = ("\n\n### Approximate targets (recall@10 >= 0.95 at >= 10x exact batch-1 speed, "
                         "at the largest size)\n\n" + _machine.markdown_table(
                             approx_targets, ["data", "size", "kind", "recall_at_10", "speedup_b1", "met"])
                         if approx_targets else "")
    return (f"## Exact search: {n:,} x {d} normalised float32, top-{ex['k']}, {threads} threads\n\n"
            f"Batch 1: {results['queries_b1']} single-query searches (p50); batch 64: "
            f"{results['queries_b64'] // 64} batches (p50, per query). GB/s = stored bytes / ms per query at batch "
            f"1; GFLOP/s = 2 * dim * N / ms per query at batch 64. Agreement: share of the reference top-{ex['k']} "
            f"ids found (the reference of a filtered row is numpy over the allowed rows). FAISS BLAS threshold "
            f"(index.faiss_config): {ex['blas_threshold']} (nq * dim).\n\n"
            + _machine.markdown_table(exact_rows, ["row", "b1_ms_per_query", "b1_gbps", "b64_ms_per_query",
                                                   "b64_gflops", "b64_vs_gallery_flat", "agreement_with_reference"])
            + "\n\n### Ceilings (same run)\n\n" + _machine.markdown_table(ceilings)
            + "\n\n### Targets\n\n" + _machine.markdown_table(targets, ["target", "measured", "limit", "met"])
            + "\n\n### FAISS IndexFlatIP: per-query scan vs sgemm path, by batch size (same run)\n\n" + sweep
            + "\n\n### README table\n\n" + readme_table(results)
            + f"\n\n## Approximate kinds\n\nrecall@10 against exact numpy top-10 over the same "
              f"{results['queries_b64']} queries; exact_b1_ms: exact one-query search over the same N (numpy GEMV), "
              f"speedup_b1 = exact_b1_ms / b1_ms_p50.\n\nData:{described}\n\n{approx}\n{skipped}"
              + approx_targets_md + "\n")


def approx_target_rows(rows: list[dict[str, Any]], recall: float = 0.95, speedup: float = 10.0) -> list[dict[str, Any]]:
    """Each approximate row at the largest size, checked against the owner's recall and speed target."""
    if not rows:
        return []
    largest = max(r["size"] for r in rows)
    return [{"data": r.get("data", "clustered"), "size": r["size"], "kind": r["kind"],
             "recall_at_10": r["recall_at_10"], "speedup_b1": r.get("speedup_b1"),
             "met": "yes" if r["recall_at_10"] >= recall and (r.get("speedup_b1") or 0) >= speedup else "**no**"}
            for r in rows if r["size"] == largest]


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    ex = results["exact"]
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(17, 5))
    rows = ex["rows"]
    labels = [r["row"].replace(" (", "\n(").replace(", filter", "\nfilter") for r in rows]
    pos = np.arange(len(rows))
    left.barh(pos, [r["b1_ms_per_query"] for r in rows], color="tab:blue")
    n, d, bw = ex["n"], ex["dim"], ex["ceilings"]["read_gbps"]
    for bytes_, name, style in ((4, "fp32", "--"), (2, "fp16", ":")):
        left.axvline(n * d * bytes_ / bw / 1e6, color="k", linestyle=style, label=f"{name} bytes / read bandwidth")
    left.set_yticks(pos, labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("ms per query, batch 1")
    left.legend(fontsize=7)
    left.set_title("batch 1 (memory-bound)")
    mid.barh(pos, [r["b64_ms_per_query"] for r in rows], color="tab:orange")
    mid.axvline(2 * d * n / ex["ceilings"]["numpy_gemm_b64_gflops"] / 1e6, color="k", linestyle="--",
                label="numpy GEMM ceiling")
    mid.set_yticks(pos, [])
    mid.invert_yaxis()
    mid.set_xscale("log")
    mid.set_xlabel("ms per query, batch 64")
    mid.legend(fontsize=7)
    mid.set_title("batch 64 (compute-bound)")
    for r in results["rows"]:
        right.scatter(r["b64_ms_per_query"], r["recall_at_10"])
        right.annotate(f"{r['kind']} {r['size']:.0e}", (r["b64_ms_per_query"], r["recall_at_10"]), fontsize=7)
    right.set_xscale("log")
    right.set_xlabel("ms per query at batch 64")
    right.set_ylabel("recall@10 vs exact")
    right.set_title("approximate kinds")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake."""
    return _machine.run_and_write(parse_args(argv), run, report, plot)


if __name__ == "__main__":
    raise SystemExit(main())
