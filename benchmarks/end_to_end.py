"""End-to-end benchmark: where the time of one ``POST /search`` goes, against the bare model time.

``python -m benchmarks.end_to_end --model M.onnx --gallery DIR --images DIR [--requests 200]
[--variants default,h11-asyncio] [--profile]``

At concurrency 1 (one request at a time, keep-alive), each request's client wall time is split into

* **model**: the server's model call (``xmreid_model_call_duration_seconds`` from ``/metrics``);
* **batching**: the rest of ``timings_ms.embed`` (micro-batch wait, queue, thread hand-off);
* **decode** and **search**: ``timings_ms.decode`` / ``timings_ms.search`` (each includes its thread hop);
* **HTTP and framework**: client wall minus ``timings_ms.total`` (connection, multipart parsing, routing,
  validation, JSON encoding, the client itself).

In the same run, interleaved with the requests in blocks so that load from other processes hits both
alike, the same embedder in this process times the *bare* stages on the same crops: ``embedder.embed``
on one pre-decoded image (the bare model time), ``decode_image``, and the gallery's search plus metadata
lookup. The owner's target is a /search p50 within ``TARGET_OVERHEAD`` of the bare model p50.

``--variants`` adds servers that differ in their ``serve`` options (``benchmarks._server.VARIANTS``),
measured the same way and interleaved with the default. Every server is the unchanged command line: the
benchmark patches nothing, and its report holds only what this run measured. ``--profile`` runs the
default server under cProfile and lists the functions where its event-loop thread spends its time
(everything HTTP and framework: the worker threads are timed by ``timings_ms``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import _machine
from benchmarks._server import (
    VARIANTS,
    Query,
    ServerProcess,
    load_queries,
    profile_requests,
    profile_summary,
    profiled_launcher,
    scrape,
    server_env,
)

logger = logging.getLogger(__name__)

TARGET_OVERHEAD = 0.15  # /search p50 at concurrency 1 <= (1 + this) x bare model p50 (owner's target)
STAGES = ("model", "batching", "decode", "search", "http")

@dataclass
class Samples:
    """Per-request measurements of one server (client wall, server timings) or of the bare stages."""

    wall_ms: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0


class BareStages:
    """The serving stages called directly in this process: decode, model, gallery search + metadata.

    The embedder comes from ``serving.embedders.load_embedder``, the loader the server uses, so its ONNX
    Runtime session has the server's options.
    """

    def __init__(self, model: Path, gallery: Path, top_k: int) -> None:
        from index import Gallery
        from serving.embedders import load_embedder

        self.embedder = load_embedder(model)
        self.gallery = Gallery.load(gallery, fingerprint=self.embedder.fingerprint, dim=int(self.embedder.dim))
        self.top_k = top_k
        self.samples: dict[str, list[float]] = {"decode": [], "model": [], "search": []}

    def run(self, query: Query) -> None:
        from serving.core.imageio import decode_image

        t0 = time.perf_counter()
        image = decode_image(query.data, self.embedder.height, self.embedder.width)
        t1 = time.perf_counter()
        vector = self.embedder.embed(image[None])
        t2 = time.perf_counter()
        _, ids = self.gallery.search(vector, self.top_k)
        self.gallery.get([int(i) for i in ids[0] if i >= 0])
        t3 = time.perf_counter()
        for name, seconds in (("decode", t1 - t0), ("model", t2 - t1), ("search", t3 - t2)):
            self.samples[name].append(1e3 * seconds)

    def reset(self) -> None:
        """Forget the samples so far (the warm-up's)."""
        self.samples = {name: [] for name in self.samples}

    def close(self) -> None:
        self.embedder.close()


def post(client: httpx.Client, query: Query, top_k: int, samples: Samples) -> None:
    """One ``/search``, timed from before the request is encoded to after the JSON is parsed."""
    t0 = time.perf_counter()
    try:
        response = client.post("/search", params={"top_k": top_k},
                               files={"image": (Path(query.name).name, query.data, query.content_type)})
        body = response.json() if response.status_code == 200 else None
    except httpx.HTTPError:
        body = None
    wall = 1e3 * (time.perf_counter() - t0)
    if body is None:
        samples.errors += 1
        return
    samples.wall_ms.append(wall)
    samples.timings.append(body["timings_ms"])


def breakdown(samples: Samples, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Mean ms per request of each stage and its share of the mean client wall time."""
    calls = after.get("xmreid_model_calls_total", 0.0) - before.get("xmreid_model_calls_total", 0.0)
    model_s = (after.get("xmreid_model_call_duration_seconds_sum", 0.0)
               - before.get("xmreid_model_call_duration_seconds_sum", 0.0))
    n = len(samples.wall_ms)
    mean = {k: float(np.mean([t[k] for t in samples.timings])) for k in ("decode", "embed", "search", "total")}
    wall = float(np.mean(samples.wall_ms))
    model = 1e3 * model_s / n if n else 0.0  # per request: at concurrency 1 every request is one call
    ms = {"model": model, "batching": mean["embed"] - model, "decode": mean["decode"], "search": mean["search"],
          "http": wall - mean["total"]}
    stats = _machine.summarize([w / 1e3 for w in samples.wall_ms])
    return {"requests": n, "errors": samples.errors, "model_calls": calls, "wall_mean_ms": wall,
            "wall_p50_ms": stats.get("p50_ms"), "wall_p95_ms": stats.get("p95_ms"),
            "ms": ms, "share": {k: v / wall for k, v in ms.items()},
            "server_p50_ms": {k: float(np.median([t[k] for t in samples.timings]))
                              for k in ("decode", "embed", "search", "total")}}


def profile_pass(server: ServerProcess, client: httpx.Client, queries: Sequence[Query], args: argparse.Namespace,
                 path: Path) -> dict[str, Any]:
    """Send ``args.profile_requests`` searches with the server's cProfile switched on; summarise it."""
    done = Samples()

    def send() -> None:
        for i in range(args.profile_requests):
            post(client, queries[i % len(queries)], args.top_k, done)

    profile_requests(server, path, send)
    return {"requests": len(done.wall_ms), "wall_mean_ms_under_profiler": float(np.mean(done.wall_ms)),
            "file": str(path), **profile_summary(path, max(1, len(done.wall_ms)))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the servers, interleave bare and HTTP blocks, and return the JSON-able results."""
    from tqdm import tqdm

    queries = load_queries(args.images)
    bare = BareStages(args.model, args.gallery, args.top_k)
    results: dict[str, Any] = {"requests": args.requests, "top_k": args.top_k, "block": args.block,
                               "target_overhead": TARGET_OVERHEAD, "variants": {}, "queries": len(queries)}
    servers: dict[str, ServerProcess] = {}
    active = list(args.variants)
    samples = {name: Samples() for name in active}
    metrics: dict[str, dict[str, float]] = {}
    profile_path = Path(tempfile.mkdtemp(prefix="e2e-profile-")) / "server.prof" if args.profile else None
    clients: dict[str, httpx.Client] = {}
    try:
        for name in active:
            variant = VARIANTS[name]
            launcher = profiled_launcher(profile_path) if name == "default" and profile_path else ("-m", "serving")
            servers[name] = ServerProcess(args.model, args.gallery, variant.args, env=server_env(args.extra_path),
                                          launcher=launcher).start()
            clients[name] = httpx.Client(base_url=servers[name].url, timeout=120.0)
            results["variants"][name] = {"description": variant.description, "server_args": list(variant.args),
                                         "command": " ".join(servers[name].command)}
        for i in range(args.warmup):  # lazy initialisation (first ONNX Runtime run, first FAISS search)
            bare.run(queries[i % len(queries)])
            for name in active:
                post(clients[name], queries[i % len(queries)], args.top_k, Samples())
        bare.reset()
        metrics = {name: scrape(servers[name].url) for name in active}
        steps = ["bare", *active]
        with tqdm(total=args.requests * len(steps), desc="end-to-end", unit="req", disable=args.no_progress) as bar:
            for block, start in enumerate(range(0, args.requests, args.block)):
                stop = min(args.requests, start + args.block)
                for step in steps[block % len(steps):] + steps[:block % len(steps)]:  # rotate who goes first
                    time.sleep(0.05)  # let the previous block's worker threads go idle
                    for i in range(start, stop):
                        if step == "bare":
                            bare.run(queries[i % len(queries)])
                        else:
                            post(clients[step], queries[i % len(queries)], args.top_k, samples[step])
                    bar.update(stop - start)
        for name in active:
            results["variants"][name].update(breakdown(samples[name], metrics[name], scrape(servers[name].url)))
        if profile_path is not None:  # after the timed blocks, so cProfile's own cost slows none of them
            results["profile"] = profile_pass(servers["default"], clients["default"], queries, args, profile_path)
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()
        bare.close()
    results["bare"] = {k: _machine.summarize([v / 1e3 for v in vals]) for k, vals in bare.samples.items() if vals}
    bare_model = results["bare"]["model"]["p50_ms"]
    for v in results["variants"].values():
        v["overhead_vs_bare_model"] = v["wall_p50_ms"] / bare_model - 1.0
        v["target_met"] = v["overhead_vs_bare_model"] <= TARGET_OVERHEAD
        v["largest_stage"] = max(STAGES, key=lambda k: v["ms"][k])
    return results


def report(results: dict[str, Any]) -> str:
    bare = results["bare"]
    parts = [(f"Concurrency 1, {results['requests']} requests per server, top_k {results['top_k']}; bare stages and "
             f"servers interleaved in blocks of {results['block']}. Bare model (in-process `embedder.embed` on one "
             f"pre-decoded crop): p50 {bare['model']['p50_ms']:.2f} ms, p95 {bare['model']['p95_ms']:.2f} ms; bare "
             f"decode p50 {bare['decode']['p50_ms']:.2f} ms; bare search + metadata p50 "
             f"{bare['search']['p50_ms']:.2f} ms.")]
    rows = []
    for name, v in results["variants"].items():
        row = {"server": name, "p50_ms": v["wall_p50_ms"], "p95_ms": v["wall_p95_ms"], "mean_ms": v["wall_mean_ms"]}
        row.update({f"{k}_ms": v["ms"][k] for k in STAGES})
        row["vs_bare_model"] = f"{v['overhead_vs_bare_model']:+.0%}"
        row["target"] = "met" if v["target_met"] else "not met"
        rows.append(row)
    parts.append("Mean ms per request by stage (`model`: the server's model call; `batching`: micro-batch wait and "
                 "thread hand-off; `http`: client wall minus the server's `timings_ms.total`). `vs_bare_model`: "
                 f"/search p50 over the bare model p50 (target <= +{TARGET_OVERHEAD:.0%}).")
    parts.append(_machine.markdown_table(rows))
    share_rows = [{"server": name, **{k: f"{v['share'][k]:.0%}" for k in STAGES}}
                  for name, v in results["variants"].items()]
    parts.append("Share of the mean client wall time:")
    parts.append(_machine.markdown_table(share_rows))
    parts.append("## Where the overhead is\n\n" + "\n".join(
        f"- `{name}`: the largest stage is `{v['largest_stage']}`, {v['ms'][v['largest_stage']]:.2f} ms "
        f"({v['share'][v['largest_stage']]:.0%} of the mean wall time); beyond the model: "
        f"{v['wall_mean_ms'] - v['ms']['model']:.2f} ms per request"
        for name, v in results["variants"].items()))
    parts.append("Servers: " + "; ".join(f"`{name}`: {v['description']}" for name, v in results["variants"].items()))
    if results.get("profile"):
        prof = results["profile"]
        parts.append(f"Event-loop thread of the `default` server under cProfile ({prof['requests']} requests after "
                     f"the timed ones; {prof['wall_mean_ms_under_profiler']:.1f} ms/request with the profiler on). "
                     "Own time per request, idle waits left out, by package:")
        parts.append(_machine.markdown_table(prof["by_package"]))
        parts.append("Most expensive functions (own time):")
        parts.append(_machine.markdown_table(prof["functions"], ["function", "where", "calls_per_request",
                                                                  "own_ms_per_request", "cum_ms_per_request"]))
    return "\n\n".join(parts)


def plot(results: dict[str, Any]) -> Any:
    """Stacked mean ms per stage for each server, under the bare model bars (means, so the stages add up)."""
    plt = _machine.pyplot()
    names = list(results["variants"])
    bare = {"bare model": results["bare"]["model"]["mean_ms"]}
    labels = [*bare, *names]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.6 * len(labels)))
    ax.barh(range(len(bare)), list(bare.values()), color="C0")
    left = np.zeros(len(labels))
    for j, stage in enumerate(STAGES):
        values = np.array([0.0] * len(bare) + [results["variants"][n]["ms"][stage] for n in names])
        ax.barh(range(len(labels)), values, left=left, color=f"C{j}", label=stage)
        left += np.maximum(values, 0)
    ax.axvline(bare["bare model"] * (1 + TARGET_OVERHEAD), color="red", linestyle=":",
               label=f"bare model +{TARGET_OVERHEAD:.0%}")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("mean ms per request (concurrency 1)")
    ax.set_title("Where one POST /search spends its time")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _machine.benchmark_parser("end_to_end", __doc__)
    parser.add_argument("--model", type=Path, required=True, help="exported model (.onnx)")
    parser.add_argument("--gallery", type=Path, required=True, help="gallery directory built with --model")
    parser.add_argument("--images", type=Path, required=True, help="SYSU-MM01-layout root with cam3/cam6 crops")
    parser.add_argument("--requests", type=int, default=200, help="requests per server (and bare runs)")
    parser.add_argument("--variants", default="default",
                        help=f"servers to compare, comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--block", type=int, default=20, help="requests per interleaved block")
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per server first")
    parser.add_argument("--top-k", type=int, default=10, help="top_k of every search")
    parser.add_argument("--profile", action="store_true", help="profile the default server's event loop (cProfile)")
    parser.add_argument("--profile-requests", type=int, default=100, help="requests sent while profiling")
    parser.add_argument("--extra-path", type=Path, help="a folder of packages (`pip install --target DIR ...`) put "
                        "first on every server's PYTHONPATH, to measure with packages this environment lacks")
    _machine.add_output_args(parser, "end_to_end")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(VARIANTS)}")
    if args.profile and "default" not in args.variants:
        parser.error("--profile profiles the 'default' server; include it in --variants")
    if args.requests < 1 or args.block < 1 or args.warmup < 0:
        parser.error("--requests and --block must be positive, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake."""
    return _machine.run_and_write(parse_args(argv), run, report, plot)


if __name__ == "__main__":
    sys.exit(main())
