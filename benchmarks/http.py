"""HTTP load benchmark: requests/s and p50/p95/p99 latency of ``POST /search``, micro-batching on and off.

``python -m benchmarks.http --model M.onnx --gallery DIR --images DIR [--concurrency 1,8,32] [--requests 400]
[--duration-cap 60] [--quick]``

It starts two real servers (``python -m serving serve``) on free loopback ports, one with micro-batching
(``--max-batch-size``, default the server's) and one without (``--max-batch-size 1``), and drives both
with the same bounded load: for each concurrency level a fixed number of requests, posted by exactly
``concurrency`` client coroutines (``httpx.AsyncClient``, keep-alive), stopped early when the duration
cap is reached. The bodies are real infrared crops (``cam3``/``cam6`` of a SYSU-MM01-layout tree). The
two servers take turns level by level (the order flips every level), so a burst of load from other
processes on a shared machine hits both alike. ``--url`` benchmarks an already running server instead.

Per level: requests/s, client-side latency percentiles, errors, the server's mean decode / embed /
search split (``timings_ms``) and, from ``/metrics``, model calls per request and the mean micro-batch.

The baseline in the same run (after LitServe's parity tests): the same embedder, loaded in this process,
embedding the same pre-decoded crops in batches of the max batch size, measured before and after the
HTTP levels. The owner's target is that micro-batched serving reaches at least ``TARGET_RATIO`` of that
offline throughput; it is checked and printed, never asserted.

Client and servers share the machine: on a small CPU the load generator's own work (multipart encoding,
JSON parsing) competes with the server, which the numbers include, as they would for a client on the
same host.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import mimetypes
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import _machine
from benchmarks._server import ServerProcess, scrape
from serving.errors import UserError

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.90  # micro-batched requests/s over offline batched images/s (owner's target)
IR_CAMERAS = ("cam3", "cam6")  # SYSU-MM01's infrared cameras
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
SEARCH_OK = 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"}'


@dataclass(frozen=True)
class Query:
    """One request body: the file name and its bytes."""

    name: str
    data: bytes

    @property
    def content_type(self) -> str:
        return mimetypes.guess_type(self.name)[0] or "application/octet-stream"


@dataclass
class LevelResult:
    """What one load level measured on the client side."""

    concurrency: int
    planned: int
    latencies_s: list[float] = field(default_factory=list)
    timings_ms: list[dict[str, float]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def issued(self) -> int:
        return len(self.latencies_s) + sum(self.errors.values())


def load_queries(images: Path, limit: int = 256) -> list[Query]:
    """Infrared crops under ``images/cam3`` and ``images/cam6``, spread evenly over the sorted files.

    Args:
        images: a SYSU-MM01-layout dataset root (e.g. ``data/synthetic_sysu``).
        limit: most crops to keep (requests cycle through them).

    Returns:
        The crops, in a deterministic order.

    Raises:
        UserError: no infrared crops there.
    """
    files = sorted(p for cam in IR_CAMERAS if (images / cam).is_dir()
                   for p in (images / cam).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no infrared crops under {images}: expected {' and '.join(IR_CAMERAS)} folders of "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))} files (a SYSU-MM01-layout root such as "
                        "data/synthetic_sysu)")
    step = max(1, len(files) // max(1, limit))
    return [Query(str(p.relative_to(images)), p.read_bytes()) for p in files[::step][:limit]]


async def run_level(url: str, queries: Sequence[Query], concurrency: int, requests: int, duration_cap_s: float,
                    *, top_k: int = 10, timeout_s: float = 120.0,
                    on_done: Callable[[], None] | None = None) -> LevelResult:
    """Post ``requests`` searches with ``concurrency`` requests in flight; stop issuing at the cap.

    Each of the ``concurrency`` coroutines posts its next request as soon as its previous one is
    answered (a closed loop), so the number in flight never exceeds ``concurrency``.

    Args:
        url: server base URL.
        queries: request bodies, used in turn.
        concurrency: requests in flight.
        requests: requests to send (fewer if the duration cap hits first).
        duration_cap_s: no new request starts after this many seconds.
        top_k: ``top_k`` of each search.
        timeout_s: per-request timeout (a timeout counts as an error).
        on_done: called after every answered request (progress bar).

    Returns:
        Latencies of the 200s, the server's ``timings_ms`` of each, errors by status or exception name.
    """
    result = LevelResult(concurrency, requests)
    counter = itertools.count()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as client:
        started = time.perf_counter()
        stop_at = started + duration_cap_s

        async def worker() -> None:
            while True:
                i = next(counter)
                if i >= requests or time.perf_counter() >= stop_at:
                    return
                query = queries[i % len(queries)]
                t0 = time.perf_counter()
                try:
                    response = await client.post("/search", params={"top_k": top_k},
                                                  files={"image": (Path(query.name).name, query.data,
                                                                   query.content_type)})
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                else:
                    if response.status_code == 200:
                        result.latencies_s.append(time.perf_counter() - t0)
                        result.timings_ms.append(response.json()["timings_ms"])
                    else:
                        result.errors[str(response.status_code)] += 1
                if on_done is not None:
                    on_done()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed_s = time.perf_counter() - started
    return result


def level_row(mode: str, result: LevelResult, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """One table row: client-side numbers plus the server-side counters that changed during the level."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    stats = _machine.summarize(result.latencies_s)
    served = delta(SEARCH_OK)
    calls = delta("xmreid_model_calls_total")
    row: dict[str, Any] = {
        "mode": mode, "concurrency": result.concurrency, "ok": len(result.latencies_s),
        "errors": sum(result.errors.values()), "planned": result.planned, "elapsed_s": result.elapsed_s,
        "requests_per_s": len(result.latencies_s) / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        "p50_ms": stats.get("p50_ms"), "p95_ms": stats.get("p95_ms"), "p99_ms": stats.get("p99_ms"),
        "mean_ms": stats.get("mean_ms"),
        "model_calls": calls, "model_calls_per_request": calls / served if served else None,
        "mean_batch": delta("xmreid_model_batch_size_sum") / calls if calls else None,
        "model_call_ms": 1e3 * delta("xmreid_model_call_duration_seconds_sum") / calls if calls else None,
        "error_kinds": dict(result.errors),
    }
    for stage in ("decode", "embed", "search", "total"):
        values = [t[stage] for t in result.timings_ms if stage in t]
        row[f"server_{stage}_ms"] = float(np.mean(values)) if values else None
    return row


def offline_reference(model: Path, queries: Sequence[Query], batch: int, *, rounds: int = 5,
                      min_images: int = 64) -> dict[str, Any]:
    """Images/s of the server's embedder embedding pre-decoded crops in batches of ``batch``, in this process.

    The same loader (``serving.embedders.load_embedder``), the same decoder and the same crops as the
    server, so the only difference from serving is everything HTTP and batching add.
    """
    from serving.embedders import load_embedder
    from serving.imageio import decode_image

    embedder = load_embedder(model)
    try:
        count = max(min_images, batch)
        images = np.stack([decode_image(queries[i % len(queries)].data, embedder.height, embedder.width)
                           for i in range(count)])
        batches = [images[i:i + batch] for i in range(0, count, batch)]

        def one_pass() -> None:
            for chunk in batches:
                embedder.embed(chunk)

        samples = _machine.time_calls(one_pass, repeat=rounds, warmup=1)
    finally:
        embedder.close()
    per_pass = sorted(samples)[len(samples) // 2]
    return {"batch": batch, "images": count, "rounds": rounds, "images_per_s": count / per_pass,
            "ms_per_batch": 1e3 * per_pass / len(batches), "backend": "in-process " + embedder.name}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from serving.core.config import Settings

    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="exported model (.onnx); also used for the offline reference")
    parser.add_argument("--gallery", type=Path, help="gallery directory built with --model")
    parser.add_argument("--images", type=Path, required=True, help="SYSU-MM01-layout root with cam3/cam6 crops")
    parser.add_argument("--url", help="benchmark this running server instead of starting two")
    parser.add_argument("--concurrency", default="1,8,32", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="requests per level and mode")
    parser.add_argument("--duration-cap", type=float, default=60.0, help="seconds per level and mode at most")
    parser.add_argument("--max-batch-size", type=int, default=defaults["max_batch_size"].default,
                        help="micro-batch size of the batching server and of the offline reference")
    parser.add_argument("--max-wait-ms", type=float, default=defaults["max_wait_ms"].default,
                        help="micro-batch wait of the batching server")
    parser.add_argument("--server-variant", default="default",
                        help="start both servers as this benchmarks.end_to_end variant (its options win over the "
                             "mode's, its patches are applied), e.g. fixes: measures a proposed fix under load")
    parser.add_argument("--extra-path", type=Path, help="folder of packages a variant needs (see end_to_end)")
    parser.add_argument("--top-k", type=int, default=10, help="top_k of every search")
    parser.add_argument("--warmup", type=int, default=16, help="untimed requests per server before the levels")
    parser.add_argument("--offline-images", type=int, default=64, help="crops per offline reference pass")
    parser.add_argument("--offline-rounds", type=int, default=5, help="timed offline passes (the median is used)")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 40 requests, 20 s cap")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--name", default="http", help="results file stem")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error(f"--concurrency must be comma-separated integers, got {args.concurrency!r}")
    if args.quick:
        args.concurrency = [c for c in args.concurrency if c <= 8] or [1]
        args.requests, args.duration_cap = min(args.requests, 40), min(args.duration_cap, 20.0)
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1 or args.duration_cap <= 0:
        parser.error("--concurrency levels, --requests and --duration-cap must be positive")
    if args.max_batch_size < 1 or args.offline_images < 1 or args.offline_rounds < 1 or args.warmup < 0:
        parser.error("--max-batch-size, --offline-images and --offline-rounds must be positive, --warmup >= 0")
    if args.url is None and (args.model is None or args.gallery is None):
        parser.error("give --model and --gallery (the benchmark starts the servers), or --url")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark (servers, levels, offline reference); returns the JSON-able results.

    Raises:
        UserError: missing inputs, or a server that does not start.
    """
    from tqdm import tqdm

    import os

    from benchmarks.end_to_end import VARIANTS, launcher, missing_modules

    if args.server_variant not in VARIANTS:
        raise UserError(f"unknown --server-variant {args.server_variant!r}; valid: {', '.join(VARIANTS)}")
    variant = VARIANTS[args.server_variant]
    missing = missing_modules(variant, args.extra_path)
    if missing:
        raise UserError(f"--server-variant {args.server_variant} needs {', '.join(missing)}; pip install them or "
                        "pass --extra-path")
    env = {}
    if variant.needs and args.extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.extra_path), os.environ.get("PYTHONPATH")]))
    queries = load_queries(args.images)
    results: dict[str, Any] = {
        "concurrency": args.concurrency, "requests_per_level": args.requests, "duration_cap_s": args.duration_cap,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "top_k": args.top_k,
        "queries": len(queries), "target_ratio": TARGET_RATIO, "servers": {}, "rows": [], "offline": [],
        "server_variant": args.server_variant, "server_variant_description": variant.description,
    }
    if args.model is not None:
        results["offline"].append(offline_reference(args.model, queries, args.max_batch_size,
                                                    rounds=args.offline_rounds, min_images=args.offline_images))
    modes = {"external": None} if args.url else {
        "batching": ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)],
        "no-batching": ["--max-batch-size", "1"]}
    servers: dict[str, ServerProcess | None] = {}
    total = len(modes) * len(args.concurrency) * args.requests
    with tqdm(total=total, desc="http benchmark", unit="req", disable=args.no_progress) as bar:
        try:
            for mode, extra in modes.items():
                server = None if extra is None else ServerProcess(
                    args.model, args.gallery, [*extra, *variant.args], env=env, launcher=launcher(variant)).start()
                servers[mode] = server
                url = args.url.rstrip("/") if server is None else server.url
                ready = httpx.get(f"{url}/readyz", timeout=10.0)
                if ready.status_code != 200:
                    raise UserError(f"{url}/readyz answered {ready.status_code}: {ready.text[:200]}")
                results["servers"][mode] = {"url": url, "ready": ready.json(),
                                            "command": None if server is None else " ".join(server.command)}
                if args.warmup:  # first calls pay for lazy initialisation; keep them out of the levels
                    asyncio.run(run_level(url, queries, min(8, max(args.concurrency)), args.warmup, 60.0,
                                          top_k=args.top_k))
            for index, concurrency in enumerate(args.concurrency):
                order = list(modes) if index % 2 == 0 else list(reversed(modes))
                for mode in order:
                    url = results["servers"][mode]["url"]
                    before = scrape(url)
                    level = asyncio.run(run_level(url, queries, concurrency, args.requests, args.duration_cap,
                                                  top_k=args.top_k, on_done=bar.update))
                    bar.update(args.requests - level.issued)  # the duration cap left these unsent
                    results["rows"].append(level_row(mode, level, before, scrape(url)))
                    logger.info("%s concurrency %d: %.1f req/s", mode, concurrency, results["rows"][-1]["requests_per_s"])
        finally:
            for server in servers.values():
                if server is not None:
                    server.stop()
    if args.model is not None:
        results["offline"].append(offline_reference(args.model, queries, args.max_batch_size,
                                                    rounds=args.offline_rounds, min_images=args.offline_images))
    results["check"] = target_check(results)
    return results


def target_check(results: dict[str, Any]) -> dict[str, Any] | None:
    """Best micro-batched requests/s over the mean offline images/s, against :data:`TARGET_RATIO`."""
    batched = [r for r in results["rows"] if r["mode"] in ("batching", "external") and r["ok"]]
    if not batched or not results["offline"]:
        return None
    best = max(batched, key=lambda r: r["requests_per_s"])
    offline = float(np.mean([o["images_per_s"] for o in results["offline"]]))
    ratio = best["requests_per_s"] / offline
    return {"best_requests_per_s": best["requests_per_s"], "at_concurrency": best["concurrency"],
            "offline_images_per_s": offline, "ratio": ratio, "target": TARGET_RATIO, "met": ratio >= TARGET_RATIO}


def report(results: dict[str, Any]) -> str:
    """The Markdown body: the levels table, the server split, the offline reference and the verdict."""
    parts = [f"`POST /search` on loopback, {results['requests_per_level']} requests per level (cap "
             f"{results['duration_cap_s']:.0f} s), top_k {results['top_k']}, {results['queries']} distinct infrared "
             "crops. Latency is client wall time. Servers" + (
                 "" if "external" in results["servers"] else " (`batching` and `no-batching` differ only in "
                 "--max-batch-size)") + ":"]
    parts.append("\n".join(f"- `{mode}`: `{s['command'] or s['url']}`" for mode, s in results["servers"].items()))
    if results.get("server_variant", "default") != "default":
        parts.append(f"Both servers run variant `{results['server_variant']}` of `benchmarks.end_to_end`: "
                     f"{results['server_variant_description']}.")
    ready = next(iter(results["servers"].values()), {}).get("ready", {})
    if ready:
        model = ready.get("model", {})
        parts.append(f"Model: {model.get('name')} {model.get('height')}x{model.get('width')} -> {model.get('dim')}-d "
                     f"(fingerprint {str(model.get('fingerprint'))[:12]}); gallery of {ready.get('gallery_size')} items.")
    parts.append(_machine.markdown_table(results["rows"], [
        "mode", "concurrency", "ok", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms",
        "model_calls_per_request", "mean_batch", "model_call_ms"]))
    parts.append("Server-side split (mean ms per request, from `timings_ms`; `embed` includes the micro-batch wait "
                 "and queueing behind other batches):")
    parts.append(_machine.markdown_table(results["rows"], [
        "mode", "concurrency", "server_decode_ms", "server_embed_ms", "server_search_ms", "server_total_ms",
        "mean_ms"]))
    for o in results["offline"]:
        parts.append(f"Offline reference ({o['backend']}, batch {o['batch']}, {o['images']} pre-decoded crops): "
                     f"{o['images_per_s']:.1f} images/s.")
    check = results.get("check")
    if check:
        parts.append(f"**Target** (micro-batched requests/s >= {check['target']:.0%} of offline batched images/s): "
                     f"{check['best_requests_per_s']:.1f} req/s at concurrency {check['at_concurrency']} vs "
                     f"{check['offline_images_per_s']:.1f} images/s = {check['ratio']:.0%}: "
                     f"**{'met' if check['met'] else 'not met'}**.")
    return "\n\n".join(parts)


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    fig, (ax_rps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in dict.fromkeys(r["mode"] for r in results["rows"]):
        rows = sorted((r for r in results["rows"] if r["mode"] == mode and r["ok"]), key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        ax_rps.plot(xs, [r["requests_per_s"] for r in rows], marker="o", label=mode)
        line, = ax_lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{mode} p50")
        ax_lat.plot(xs, [r["p95_ms"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                    label=f"{mode} p95")
    if results["offline"]:
        offline = float(np.mean([o["images_per_s"] for o in results["offline"]]))
        ax_rps.axhline(offline, color="grey", linestyle=":", label=f"offline batch {results['max_batch_size']}")
        ax_rps.axhline(TARGET_RATIO * offline, color="red", linestyle=":", label=f"{TARGET_RATIO:.0%} target")
    for ax, ylabel in ((ax_rps, "requests / s"), (ax_lat, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["concurrency"], [str(c) for c in results["concurrency"]])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    ax_rps.set_title("POST /search throughput")
    ax_lat.set_title("POST /search latency")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    machine = _machine.describe_machine()
    try:
        results = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(results)
    paths = _machine.write_results(args.name, results, text, plot(results), out_dir=args.out, machine=machine)
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
