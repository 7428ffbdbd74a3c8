"""HTTP load benchmark: requests/s and p50/p95/p99 latency of ``POST /search``, micro-batching on and off.

``python -m benchmarks.http --model M.onnx --gallery DIR --images DIR [--concurrency 1,8,32] [--requests 400]
[--duration-cap 60] [--repeats 3] [--before DIR] [--client aiohttp,httpx] [--body multipart|raw] [--no-pin]
[--quick]``

It starts two real servers (``python -m serving serve``) on free loopback ports, one with micro-batching
(``--max-batch-size``, default the server's) and one without (``--max-batch-size 1``), and drives both
with the same bounded load: for each concurrency level a fixed number of requests, posted by exactly
``concurrency`` client coroutines (aiohttp, keep-alive; :func:`run_level` says why not httpx), stopped
early when the duration cap is reached. The bodies are real infrared crops (``cam3``/``cam6`` of a SYSU-MM01-layout tree). The
two servers take turns level by level (the order flips every level), so a burst of load from other
processes on a shared machine hits both alike. ``--url`` benchmarks an already running server instead.

Per level: requests/s, client-side latency percentiles, errors, the server's mean decode / embed /
search split (``timings_ms``) and, from ``/metrics``, model calls per request and the mean micro-batch.

The baseline in the same run (after LitServe's parity tests): the same embedder, loaded in this process,
embedding the same pre-decoded crops in batches of the max batch size, measured before and after the
HTTP levels. The owner's target is that micro-batched serving reaches at least ``TARGET_RATIO`` of that
offline throughput; it is checked and printed, never asserted.

The server's own cost: for every level the CPU time the OS charged the server process (``/proc/<pid>/stat``,
all threads; :mod:`benchmarks._proc`) per answered request, the model's share of it (the model thread's
CPU during model calls, ``xmreid_model_cpu_seconds_total``), and the rest. Each level runs ``--repeats``
times and the medians are reported. Where the machine has two or more usable cores, the load generator
is pinned to the first and the servers to the others (``sched_setaffinity``, as ``taskset -c``), so the
client's work neither counts as the server's nor steals its core; the offline reference runs on the
server's cores. A last level is sent to a separate, cProfile'd batching server and its top functions
are written with the results. ``--before DIR`` adds the servers of another checkout (a ``git worktree``
of an earlier commit) to the same run, so a change is measured before/after side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np

from benchmarks import _machine, _proc, _server
from benchmarks._server import (VARIANTS, Query, ServerProcess, load_queries, profile_requests, profile_summary,
                                profiled_launcher, scrape, server_env)
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.90  # micro-batched requests/s over offline batched images/s (owner's target)
SEARCH_OK = 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"}'


def endpoint(images_per_request: int) -> str:
    """The route a level posts to: ``/search`` for one crop per request, ``/search/batch`` for several."""
    return "/search" if images_per_request == 1 else "/search/batch"


def answered(images_per_request: int) -> str:
    """The ``/metrics`` counter of that route's 200 answers."""
    return SEARCH_OK.replace('"/search"', f'"{endpoint(images_per_request)}"')
MODEL_CPU = "xmreid_model_cpu_seconds_total"
# Issue 19's aims, checked and printed, never asserted: server CPU per /search outside the model, the
# micro-batched throughput at the highest concurrency over offline batched embedding on the same cores,
# and the mean micro-batch there.
BODY_FORMS = ("multipart", "raw")
CLIENTS = ("aiohttp", "httpx")
OUTSIDE_MODEL_CPU_MS = 1.5
BATCHED_RATIO = 0.80
MIN_MEAN_BATCH = 8.0


@dataclass
class LevelResult:
    """What one load level measured on the client side."""

    concurrency: int
    planned: int
    latencies_s: list[float] = field(default_factory=list)
    timings_ms: list[dict[str, float]] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    elapsed_s: float = 0.0
    client_cpu_s: float | None = None  # the load generator's own CPU during the level (None: not measured)
    images_per_request: int = 1  # 1: POST /search; more: POST /search/batch with that many crops

    @property
    def issued(self) -> int:
        return len(self.latencies_s) + sum(self.errors.values())


async def run_level(url: str, queries: Sequence[Query], concurrency: int, requests: int, duration_cap_s: float,
                    *, top_k: int = 10, timeout_s: float = 120.0, body: str = "multipart",
                    client: str = "aiohttp", images_per_request: int = 1,
                    on_done: Callable[[], None] | None = None) -> LevelResult:
    """Post ``requests`` searches with ``concurrency`` requests in flight; stop issuing at the cap.

    Each of the ``concurrency`` coroutines posts its next request as soon as its previous one is
    answered (a closed loop), so the number in flight never exceeds ``concurrency``. The client is
    aiohttp over ``concurrency`` keep-alive connections, with the collector paused for the level
    (:func:`benchmarks._server.collector_paused`). Not httpx by default (this module's client before;
    ``client="httpx"`` keeps it, to compare): measured on this machine against a canned-answer uvicorn
    app on the other core, httpx spent 2.5 ms of CPU per request and could not post more than ~400
    requests/s at concurrency 32, the rate the real server answered at; aiohttp spent 0.13 ms and posted
    ~7,700/s. With httpx the load generator ran 70-100 % busy, its requests reached the server as a
    trickle (one wake-up of the event loop each) instead of together, and its pauses starved the batcher.

    Args:
        url: server base URL.
        queries: request bodies, used in turn.
        concurrency: requests in flight.
        requests: requests to send (fewer if the duration cap hits first).
        duration_cap_s: no new request starts after this many seconds.
        top_k: ``top_k`` of each search.
        timeout_s: per-request timeout (a timeout counts as an error).
        body: ``multipart`` (the ``image`` form field, what most clients send) or ``raw`` (the file as the
            whole body with its image ``Content-Type``, :mod:`serving.api.raw_search`).
        client: ``aiohttp`` or ``httpx`` (see above).
        images_per_request: 1 posts ``/search``; more post ``/search/batch`` with that many ``images`` parts
            (consecutive crops of ``queries``; multipart only).
        on_done: called after every answered request (progress bar).

    Returns:
        Latencies of the 200s, the server's ``timings_ms`` of each, errors by status or exception name.
    """
    if body not in BODY_FORMS:
        raise ValueError(f"body must be one of {', '.join(BODY_FORMS)}, got {body!r}")
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {', '.join(CLIENTS)}, got {client!r}")
    if images_per_request < 1 or (images_per_request > 1 and (body != "multipart" or client != "aiohttp")):
        raise ValueError("images_per_request must be >= 1, and above 1 needs multipart bodies and the aiohttp client")
    result = LevelResult(concurrency, requests, images_per_request=images_per_request)
    params = {"top_k": str(top_k)}
    path = endpoint(images_per_request)
    if client == "httpx":
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as session:

            async def post_httpx(i: int) -> tuple[int, dict[str, float] | None]:
                query = queries[i % len(queries)]
                form: dict[str, Any] = (
                    {"content": query.data, "headers": {"Content-Type": query.content_type}} if body == "raw"
                    else {"files": {"image": (Path(query.name).name, query.data, query.content_type)}})
                response = await session.post(path, params=params, **form)
                return response.status_code, response.json()["timings_ms"] if response.status_code == 200 else None

            await _closed_loop(result, post_httpx, (httpx.HTTPError,), duration_cap_s, on_done)
        return result

    def payload(i: int) -> tuple[Any, dict[str, str] | None]:
        if body == "raw":
            query = queries[i % len(queries)]
            return query.data, {"Content-Type": query.content_type}
        form = aiohttp.FormData()
        for j in range(images_per_request):
            query = queries[(i * images_per_request + j) % len(queries)]
            form.add_field("image" if images_per_request == 1 else "images", query.data,
                           filename=Path(query.name).name, content_type=query.content_type)
        return form, None

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) \
            as session:

        async def post_aiohttp(i: int) -> tuple[int, dict[str, float] | None]:
            data, headers = payload(i)
            async with session.post(path, params=params, data=data, headers=headers) as response:
                if response.status == 200:
                    return 200, (await response.json())["timings_ms"]
                await response.read()
                return response.status, None

        await _closed_loop(result, post_aiohttp, (aiohttp.ClientError, asyncio.TimeoutError), duration_cap_s,
                           on_done)
    return result


async def _closed_loop(result: LevelResult, post: Callable[[int], Any], failures: tuple[type[BaseException], ...],
                       duration_cap_s: float, on_done: Callable[[], None] | None) -> None:
    """``result.concurrency`` coroutines, each posting request ``i`` (``post(i)`` -> status, ``timings_ms``) as soon
    as its previous one is answered, until ``result.planned`` are sent or the cap is reached; the collector is
    paused meanwhile and the elapsed wall and client CPU time are recorded."""
    counter = itertools.count()
    with _server.collector_paused():
        started, cpu_started = time.perf_counter(), time.process_time()
        stop_at = started + duration_cap_s

        async def worker() -> None:
            while True:
                i = next(counter)
                if i >= result.planned or time.perf_counter() >= stop_at:
                    return
                t0 = time.perf_counter()
                try:
                    status, timings = await post(i)
                except failures as exc:
                    result.errors[type(exc).__name__] += 1
                else:
                    if status == 200:
                        result.latencies_s.append(time.perf_counter() - t0)
                        result.timings_ms.append(timings)
                    else:
                        result.errors[str(status)] += 1
                if on_done is not None:
                    on_done()

        await asyncio.gather(*(worker() for _ in range(result.concurrency)))
        result.elapsed_s = time.perf_counter() - started
        result.client_cpu_s = time.process_time() - cpu_started


def level_row(mode: str, result: LevelResult, before: dict[str, float], after: dict[str, float],
              cpu: _proc.CpuTimes | None = None) -> dict[str, Any]:
    """One table row: client-side numbers plus the server-side counters that changed during the level.

    Args:
        mode: the server's name in the results.
        result: what the client measured.
        before: ``/metrics`` just before the level.
        after: ``/metrics`` just after it.
        cpu: CPU time the OS charged the server process during the level (None: unknown).

    Returns:
        The row. CPU figures are per answered ``/search``: ``server_cpu_ms`` is the whole process,
        ``model_cpu_ms`` the model thread's CPU during model calls (the embedder's own timing),
        ``outside_model_cpu_ms`` their difference (HTTP, parsing, decoding, search, JSON, thread hops) and
        ``event_loop_cpu_ms`` the main thread's share.
    """

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    stats = _machine.summarize(result.latencies_s)
    served = delta(answered(result.images_per_request))
    calls = delta("xmreid_model_calls_total")
    per_request = served or len(result.latencies_s)
    row: dict[str, Any] = {
        "mode": mode, "concurrency": result.concurrency, "ok": len(result.latencies_s),
        "errors": sum(result.errors.values()), "planned": result.planned, "elapsed_s": result.elapsed_s,
        "requests_per_s": len(result.latencies_s) / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        "images_per_request": result.images_per_request,
        "images_per_s": result.images_per_request * len(result.latencies_s) / result.elapsed_s
        if result.elapsed_s > 0 else 0.0,
        "p50_ms": stats.get("p50_ms"), "p95_ms": stats.get("p95_ms"), "p99_ms": stats.get("p99_ms"),
        "mean_ms": stats.get("mean_ms"),
        "model_calls": calls, "model_calls_per_request": calls / served if served else None,
        "mean_batch": delta("xmreid_model_batch_size_sum") / calls if calls else None,
        "model_call_ms": 1e3 * delta("xmreid_model_call_duration_seconds_sum") / calls if calls else None,
        "error_kinds": dict(result.errors),
        # The load generator's own CPU: near 1.0 busy it would be what limits the level, not the server.
        "client_cpu_ms": 1e3 * result.client_cpu_s / len(result.latencies_s)
        if result.client_cpu_s is not None and result.latencies_s else None,
        "client_busy": result.client_cpu_s / result.elapsed_s
        if result.client_cpu_s is not None and result.elapsed_s > 0 else None,
    }
    model_cpu = delta(MODEL_CPU) if MODEL_CPU in after else None
    row["model_cpu_ms"] = 1e3 * model_cpu / per_request if model_cpu is not None and per_request else None
    row["server_cpu_ms"] = row["event_loop_cpu_ms"] = row["outside_model_cpu_ms"] = None
    if cpu is not None and per_request:
        row["server_cpu_ms"] = 1e3 * cpu.total / per_request
        if cpu.main_thread is not None:
            row["event_loop_cpu_ms"] = 1e3 * cpu.main_thread / per_request
        if row["model_cpu_ms"] is not None:
            row["outside_model_cpu_ms"] = row["server_cpu_ms"] - row["model_cpu_ms"]
    for stage in ("decode", "embed", "search", "total"):
        values = [t[stage] for t in result.timings_ms if stage in t]
        row[f"server_{stage}_ms"] = float(np.mean(values)) if values else None
    return row


SUMMARY_FIELDS = ("requests_per_s", "images_per_s", "p50_ms", "p99_ms", "mean_batch", "model_calls_per_request", "server_cpu_ms",
                  "model_cpu_ms", "outside_model_cpu_ms", "event_loop_cpu_ms", "errors")


def summarize_runs(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over the repeated runs of each (mode, concurrency): one row each, in first-seen order."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["concurrency"]), []).append(row)
    summary = []
    for (mode, concurrency), group in groups.items():
        out: dict[str, Any] = {"mode": mode, "concurrency": concurrency, "runs": len(group)}
        for name in SUMMARY_FIELDS:
            values = [r[name] for r in group if r.get(name) is not None]
            out[name] = float(np.median(values)) if values else None
        summary.append(out)
    mode_order = list(dict.fromkeys(r["mode"] for r in rows))
    return sorted(summary, key=lambda r: (r["concurrency"], mode_order.index(r["mode"])))


def offline_reference(model: Path, queries: Sequence[Query], batch: int, *, rounds: int = 5,
                      min_images: int = 64, cpus: set[int] | None = None) -> dict[str, Any]:
    """Images/s of the server's embedder embedding pre-decoded crops in batches of ``batch``, in this process.

    The same loader (``serving.embedders.load_embedder``), the same decoder and the same crops as the
    server, so the only difference from serving is everything HTTP and batching add. With ``cpus`` it
    runs on the server's cores (this thread is pinned to them while the model loads and runs, so ONNX
    Runtime sizes its pool to them, as it does in the server), i.e. with the same thread count.
    """
    from serving.embedders import load_embedder
    from serving.core.imageio import decode_image

    previous = _proc.pin(cpus) if cpus else None
    try:
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
            threads = len(_proc.usable_cores()) or None  # ONNX Runtime's intra-op pool is sized to the cores
        finally:
            embedder.close()
    finally:
        if previous is not None:
            _proc.pin(previous)
    per_pass = sorted(samples)[len(samples) // 2]
    return {"batch": batch, "images": count, "rounds": rounds, "images_per_s": count / per_pass,
            "ms_per_batch": 1e3 * per_pass / len(batches), "ms_per_image": 1e3 * per_pass / count,
            "backend": "in-process " + embedder.name, "cores": _proc.describe(cpus),
            "threads": threads}


# The profiled server's timer: the main thread's CPU clock (the default wall clock would charge a function
# for every GIL hand-over that happens inside it); benchmarks._server.profiled_launcher adds the SIGUSR1 switch.
_PROFILE_TIMER = "time.thread_time"


def run_profile(args: argparse.Namespace, queries: Sequence[Query], extra: list[str], variant: Any,
                env: dict[str, str], cpus: set[int] | None) -> dict[str, Any]:
    """cProfile of a batching server's event-loop thread under load: its most expensive functions.

    A separate server (the same command, with a SIGUSR1 switch around cProfile, see
    :func:`benchmarks._server.profiled_launcher`) so that the measured servers run without a profiler; only the
    requests of this level are profiled.
    cProfile sees the main thread only (the model thread is not in it), and is given ``time.thread_time``
    as its clock, so a function's time is the CPU it cost, not time spent waiting for the GIL or a thread.
    """
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="http-profile-")) / "server.prof"
    concurrency = max(args.concurrency)
    with ServerProcess(args.model, args.gallery, [*extra, *variant.args], env=env, cpus=cpus,
                       launcher=profiled_launcher(path, timer=_PROFILE_TIMER)) as server:
        asyncio.run(run_level(server.url, queries, min(8, concurrency), max(args.warmup, 8), 60.0, top_k=args.top_k))
        level = profile_requests(server, path, lambda: asyncio.run(run_level(
            server.url, queries, concurrency, args.profile_requests, args.duration_cap, top_k=args.top_k)))
    answered = max(1, len(level.latencies_s))
    return {"concurrency": concurrency, "requests": answered, "errors": sum(level.errors.values()),
            "thread": "main (event loop)", **profile_summary(path, answered, top=args.profile_top)}


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
                        help=f"start both servers as this variant (its serve options win over the mode's): "
                             f"{', '.join(VARIANTS)}")
    parser.add_argument("--extra-path", type=Path, help="folder of packages (`pip install --target DIR ...`) put "
                        "first on the servers' PYTHONPATH")
    parser.add_argument("--top-k", type=int, default=10, help="top_k of every search")
    parser.add_argument("--client", type=parse_clients, default=["aiohttp"],
                        help="load generator(s), comma-separated: aiohttp (default), httpx (the earlier one, ~20x "
                             "its CPU per request); a second client's rows are labelled `MODE [client]`")
    parser.add_argument("--images-per-request", type=int, default=1,
                        help="crops per request: 1 posts /search; more post /search/batch (multipart, aiohttp)")
    parser.add_argument("--body", choices=BODY_FORMS, default="multipart",
                        help="how the crop is posted: multipart form field `image`, or the raw file as the body")
    parser.add_argument("--warmup", type=int, default=16, help="untimed requests per server before the levels")
    parser.add_argument("--offline-images", type=int, default=64, help="crops per offline reference pass")
    parser.add_argument("--offline-rounds", type=int, default=5, help="timed offline passes (the median is used)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every level and mode (medians reported)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the load generator and the servers to separate cores")
    parser.add_argument("--before", type=Path, default=None,
                        help="another checkout (e.g. a `git worktree` of an earlier commit) whose servers run "
                             "beside this one's, as `before batching` / `before no-batching`")
    parser.add_argument("--before-args", default="",
                        help="extra `serve` options of the `before` servers (e.g. '--http h11 --loop asyncio' with "
                             "--before . to measure one setting against the defaults in one run)")
    parser.add_argument("--before-label", default=None,
                        help="what the --before checkout is, for the report (e.g. `commit 60aa29a, before the fix`)")
    parser.add_argument("--profile-requests", type=int, default=400,
                        help="requests of the profiled level (0: no profile)")
    parser.add_argument("--profile-top", type=int, default=15, help="functions listed from the profile")
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 40 requests, 20 s cap, 1 run")
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
        args.repeats, args.profile_requests = 1, min(args.profile_requests, 40)
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1 or args.duration_cap <= 0:
        parser.error("--concurrency levels, --requests and --duration-cap must be positive")
    if args.max_batch_size < 1 or args.offline_images < 1 or args.offline_rounds < 1 or args.warmup < 0:
        parser.error("--max-batch-size, --offline-images and --offline-rounds must be positive, --warmup >= 0")
    if args.images_per_request < 1 or (args.images_per_request > 1 and (
            args.body != "multipart" or args.client != ["aiohttp"] or args.profile_requests)):
        parser.error("--images-per-request must be >= 1; above 1 it posts /search/batch, which needs --body multipart, "
                     "--client aiohttp and --profile-requests 0")
    if args.repeats < 1 or args.profile_requests < 0:
        parser.error("--repeats must be positive and --profile-requests >= 0")
    if args.before is not None and not (args.before / "serving" / "__main__.py").is_file():
        parser.error(f"--before {args.before}: no serving package there (expected a checkout of this repository)")
    if args.url is None and (args.model is None or args.gallery is None):
        parser.error("give --model and --gallery (the benchmark starts the servers), or --url")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark (servers, levels, offline reference, profile); returns the JSON-able results.

    Raises:
        UserError: missing inputs, or a server that does not start.
    """
    from tqdm import tqdm

    if args.server_variant not in VARIANTS:
        raise UserError(f"unknown --server-variant {args.server_variant!r}; valid: {', '.join(VARIANTS)}")
    variant = VARIANTS[args.server_variant]
    env = server_env(args.extra_path)
    split = _proc.split_cores() if args.pin and args.url is None else None
    client_cpus, server_cpus = split if split is not None else (None, None)
    queries = load_queries(args.images)
    results: dict[str, Any] = {
        "concurrency": args.concurrency, "requests_per_level": args.requests, "duration_cap_s": args.duration_cap,
        "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms, "top_k": args.top_k,
        "queries": len(queries), "target_ratio": TARGET_RATIO, "servers": {}, "rows": [], "offline": [],
        "clients": list(args.client), "body": args.body, "images_per_request": args.images_per_request,
        "repeats": args.repeats, "server_variant": args.server_variant,
        "before": None if args.before is None else {"tree": str(args.before), "args": args.before_args,
                                                    "label": args.before_label or str(args.before)},
        "server_variant_description": variant.description,
        "pinning": None if split is None else {"client_cores": _proc.describe(client_cpus),
                                               "server_cores": _proc.describe(server_cpus)},
        "aims": {"outside_model_cpu_ms": OUTSIDE_MODEL_CPU_MS, "batched_ratio": BATCHED_RATIO,
                 "min_mean_batch": MIN_MEAN_BATCH},
    }

    def offline() -> None:
        if args.model is not None:
            results["offline"].append(offline_reference(args.model, queries, args.max_batch_size,
                                                        rounds=args.offline_rounds, min_images=args.offline_images,
                                                        cpus=server_cpus))

    offline()
    batching = ["--max-batch-size", str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    modes: dict[str, tuple[list[str], Path | None] | None] = {"external": None} if args.url else {
        "batching": (batching, None), "no-batching": (["--max-batch-size", "1"], None)}
    if args.before is not None and not args.url:
        before_args = shlex.split(args.before_args)
        modes.update({"before batching": ([*batching, *before_args], args.before),
                      "before no-batching": (["--max-batch-size", "1", *before_args], args.before)})
    servers: dict[str, ServerProcess | None] = {}
    # Each server is driven by every --client; the first client's rows keep the plain mode name.
    clients = list(args.client)
    targets = [(mode if client == clients[0] else f"{mode} [{client}]", mode, client)
               for mode in modes for client in clients]
    total = len(targets) * len(args.concurrency) * args.requests * args.repeats
    restore = None
    with tqdm(total=total, desc="http benchmark", unit="req", disable=args.no_progress) as bar:
        try:
            for mode, spec in modes.items():
                server = None
                if spec is not None:
                    extra, tree = spec
                    server = ServerProcess(args.model, args.gallery, [*extra, *variant.args], env=env,
                                           cpus=server_cpus, cwd=tree).start()
                servers[mode] = server
                url = args.url.rstrip("/") if server is None else server.url
                ready = httpx.get(f"{url}/readyz", timeout=10.0)
                if ready.status_code != 200:
                    raise UserError(f"{url}/readyz answered {ready.status_code}: {ready.text[:200]}")
                results["servers"][mode] = {"url": url, "ready": ready.json(), "tree": str(spec[1] or "this checkout")
                                            if spec else None,
                                            "command": None if server is None else " ".join(server.command)}
            # The client from here on runs on its own core; the servers were given theirs at start.
            restore = _proc.pin(client_cpus) if client_cpus else None
            for mode in modes:
                if args.warmup:  # first calls pay for lazy initialisation; keep them out of the levels
                    asyncio.run(run_level(results["servers"][mode]["url"], queries, min(8, max(args.concurrency)),
                                          args.warmup, 60.0, top_k=args.top_k))
            for repeat in range(args.repeats):
                for index, concurrency in enumerate(args.concurrency):
                    order = list(targets) if (index + repeat) % 2 == 0 else list(reversed(targets))
                    for label, mode, client in order:
                        row = measure_level(label, results["servers"][mode]["url"], servers[mode], queries,
                                            concurrency, args, bar, client=client)
                        row["run"] = repeat
                        row["client"] = client
                        results["rows"].append(row)
                        logger.info("%s concurrency %d: %.1f req/s", label, concurrency, row["requests_per_s"])
        finally:
            for server in servers.values():
                if server is not None:
                    server.stop()
            if restore is not None:
                _proc.pin(restore)
    if args.profile_requests and not args.url:
        restore = _proc.pin(client_cpus) if client_cpus else None
        try:
            results["profile"] = run_profile(args, queries, batching, variant, env, server_cpus)
        finally:
            if restore is not None:
                _proc.pin(restore)
    offline()
    results["summary"] = summarize_runs(results["rows"])
    results["check"] = target_check(results)
    results["issue_checks"] = issue_checks(results)
    return results


def parse_clients(text: str) -> list[str]:
    """``--client``'s value: known load generators, comma-separated, in order, each once (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CLIENTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown client(s) {', '.join(unknown) or '(none)'}; valid: "
                                         f"{', '.join(CLIENTS)}")
    return list(dict.fromkeys(names))


def measure_level(mode: str, url: str, server: ServerProcess | None, queries: Sequence[Query], concurrency: int,
                  args: argparse.Namespace, bar: Any, client: str = "aiohttp") -> dict[str, Any]:
    """One level against one server: ``/metrics`` and the OS's CPU account of the server, before and after."""
    before = scrape(url)
    pid = server.pid if server is not None else None
    cpu_before = _proc.cpu_times(pid) if pid is not None else None
    level = asyncio.run(run_level(url, queries, concurrency, args.requests, args.duration_cap, top_k=args.top_k,
                                  body=args.body, client=client, images_per_request=args.images_per_request,
                                  on_done=bar.update))
    cpu_after = _proc.cpu_times(pid) if pid is not None else None
    after = scrape(url)  # after the CPU reading: the scrape's own cost stays out of the level
    bar.update(args.requests - level.issued)  # the duration cap left these unsent
    cpu = cpu_after - cpu_before if cpu_before is not None and cpu_after is not None else None
    return level_row(mode, level, before, after, cpu)


def target_check(results: dict[str, Any]) -> dict[str, Any] | None:
    """Best micro-batched requests/s over the mean offline images/s, against :data:`TARGET_RATIO`."""
    batched = [r for r in results.get("summary") or results["rows"] if r["mode"] in ("batching", "external")]
    batched = [r for r in batched if r.get("requests_per_s")]
    if not batched or not results["offline"]:
        return None
    best = max(batched, key=lambda r: _images_per_s(r))
    offline = float(np.mean([o["images_per_s"] for o in results["offline"]]))
    ratio = _images_per_s(best) / offline
    return {"best_requests_per_s": _images_per_s(best), "at_concurrency": best["concurrency"],
            "offline_images_per_s": offline, "ratio": ratio, "target": TARGET_RATIO, "met": ratio >= TARGET_RATIO}


def _images_per_s(row: dict[str, Any]) -> float:
    """Crops searched per second (requests/s for /search; older results files have no images_per_s)."""
    value = row.get("images_per_s")
    return float(row["requests_per_s"] if value is None else value)


def issue_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 19's aims on the medians of the runs (batching server of this checkout); printed, never asserted."""
    summary = {(r["mode"], r["concurrency"]): r for r in results.get("summary", [])}
    per = results.get("images_per_request", 1)
    what = "/search" if per == 1 else f"{endpoint(per)} request ({per} crops)"
    checks: list[dict[str, Any]] = []
    for c in results["concurrency"]:
        row = summary.get(("batching", c))
        if row is not None and row.get("outside_model_cpu_ms") is not None:
            checks.append({"check": f"server CPU per {what} outside the model at concurrency {c}",
                           "value": row["outside_model_cpu_ms"], "aim": f"<= {OUTSIDE_MODEL_CPU_MS} ms",
                           "met": row["outside_model_cpu_ms"] <= OUTSIDE_MODEL_CPU_MS})
        off = summary.get(("no-batching", c))
        if row is not None and off is not None and row.get("p99_ms") and off.get("p99_ms"):
            checks.append({"check": f"p99 with batching <= without at concurrency {c}",
                           "value": f"{row['p99_ms']:.1f} vs {off['p99_ms']:.1f} ms", "aim": "<=",
                           "met": row["p99_ms"] <= off["p99_ms"]})
    top = summary.get(("batching", max(results["concurrency"])))
    if top is not None and results["offline"]:
        offline = float(np.mean([o["images_per_s"] for o in results["offline"]]))
        ratio = _images_per_s(top) / offline
        unit = "req/s" if results.get("images_per_request", 1) == 1 else "crops/s"
        checks.append({"check": f"batched {unit} at concurrency {top['concurrency']} over offline batched images/s "
                                f"(same cores)", "value": f"{_images_per_s(top):.1f} / {offline:.1f} = {ratio:.0%}",
                       "aim": f">= {BATCHED_RATIO:.0%}", "met": ratio >= BATCHED_RATIO})
        if top.get("mean_batch") is not None:
            checks.append({"check": f"mean micro-batch at concurrency {top['concurrency']}", "value": top["mean_batch"],
                           "aim": f">= {MIN_MEAN_BATCH:g}", "met": top["mean_batch"] >= MIN_MEAN_BATCH})
    return checks


def report(results: dict[str, Any]) -> str:
    """The Markdown body: medians, per-run rows, the server split, CPU, offline reference, checks, profile."""
    per = results.get("images_per_request", 1)
    parts = [f"`POST {endpoint(per)}`" + (f" with {per} crops per request" if per > 1 else "") +
             f" on loopback, {results['requests_per_level']} requests per level (cap "
             f"{results['duration_cap_s']:.0f} s), top_k {results['top_k']}, {results['queries']} distinct infrared "
             f"crops, every level run {results.get('repeats', 1)} time(s) per server (modes interleaved, order "
             "flipped each level). Latency is client wall time. Load generator: "
             + ", ".join(f"`{c}`" for c in results.get("clients", ["httpx"]))
             + f" ({results.get('body', 'multipart')} bodies; `--client`, `--body`). Servers" + (
                 "" if "external" in results["servers"] else " (`batching` and `no-batching` differ only in "
                 "--max-batch-size)") + ":"]
    parts.append("\n".join(f"- `{mode}`: `{s['command'] or s['url']}`" + (
        f" (from {s['tree']})" if s.get("tree") not in (None, "this checkout") else "")
        for mode, s in results["servers"].items()))
    if results.get("before"):
        extra = results["before"].get("args")
        parts.append(f"`before …` servers run the code of {results['before']['label']} ({results['before']['tree']}), "
                     "with the same options" + (f" plus `{extra}`" if extra else "") + ", in the same run.")
    pinning = results.get("pinning")
    parts.append(
        f"**Pinning**: the load generator (this process) runs on core {pinning['client_cores']}, every server on "
        f"core(s) {pinning['server_cores']} (`sched_setaffinity`, what `taskset -c` does), so the client's CPU "
        "never counts as the server's; ONNX Runtime sizes its thread pool to the server's cores, and the offline "
        "reference runs on those cores too." if pinning else
        "**Pinning**: none (one usable core, `--no-pin` or `--url`): client and server share the cores.")
    if results.get("server_variant", "default") != "default":
        parts.append(f"Servers run variant `{results['server_variant']}` (`benchmarks._server.VARIANTS`): "
                     f"{results['server_variant_description']}.")
    ready = next(iter(results["servers"].values()), {}).get("ready", {})
    if ready:
        model = ready.get("model", {})
        parts.append(f"Model: {model.get('name')} {model.get('height')}x{model.get('width')} -> {model.get('dim')}-d "
                     f"(fingerprint {str(model.get('fingerprint'))[:12]}); gallery of {ready.get('gallery_size')} items.")
    if results.get("summary"):
        parts.append(f"Median of {results.get('repeats', 1)} run(s). CPU columns are ms per answered `/search`, "
                     "from the OS's account of the server process (`/proc/<pid>/stat`, all threads): `server_cpu_ms` "
                     "in total, `model_cpu_ms` the model thread's CPU during model calls (the embedder's own timing; "
                     "all of the model's CPU with one intra-op thread), `outside_model_cpu_ms` the rest (HTTP, "
                     "multipart, decoding, search, JSON, thread hand-offs), `event_loop_cpu_ms` the main thread's.")
        parts.append(_machine.markdown_table(results["summary"], [
            "mode", "concurrency", "runs", "requests_per_s", "p50_ms", "p99_ms", "mean_batch", "server_cpu_ms",
            "model_cpu_ms", "outside_model_cpu_ms", "event_loop_cpu_ms", "errors"]))
    parts.append("Every run:")
    parts.append(_machine.markdown_table(results["rows"], [
        "mode", "concurrency", "run", "ok", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms",
        "model_calls_per_request", "mean_batch", "model_call_ms", "server_cpu_ms", "outside_model_cpu_ms",
        "client_cpu_ms", "client_busy"]))
    parts.append("`client_cpu_ms` / `client_busy`: the load generator's own CPU per answered request and its share of "
                 "the level's wall time (its garbage collector is paused during a level: "
                 "`benchmarks._server.collector_paused`).")
    parts.append("Server-side split (mean ms per request, from `timings_ms`; `embed` includes the micro-batch wait "
                 "and queueing behind other batches):")
    parts.append(_machine.markdown_table(results["rows"], [
        "mode", "concurrency", "run", "server_decode_ms", "server_embed_ms", "server_search_ms", "server_total_ms",
        "mean_ms"]))
    for o in results["offline"]:
        parts.append(f"Offline reference ({o['backend']}, batch {o['batch']}, {o['images']} pre-decoded crops, "
                     f"cores {o.get('cores', 'all')}, {o.get('threads') or '?'} thread(s)): {o['images_per_s']:.1f} "
                     f"images/s ({o.get('ms_per_image', 0):.2f} ms per image).")
    check = results.get("check")
    if check:
        parts.append(f"**Target** (micro-batched requests/s >= {check['target']:.0%} of offline batched images/s): "
                     f"{check['best_requests_per_s']:.1f} req/s at concurrency {check['at_concurrency']} vs "
                     f"{check['offline_images_per_s']:.1f} images/s = {check['ratio']:.0%}: "
                     f"**{'met' if check['met'] else 'not met'}**.")
    if results.get("issue_checks"):
        parts.append("Issue 19's aims (medians of the runs, `batching` server):")
        parts.append(_machine.markdown_table([{**c, "met": "yes" if c["met"] else "**no**"}
                                              for c in results["issue_checks"]], ["check", "value", "aim", "met"]))
    profile = results.get("profile")
    if profile:
        parts.append(f"**Profile** of a `batching` server's event-loop thread (cProfile timed by the thread's CPU "
                     f"clock, {profile['requests']} requests at concurrency {profile['concurrency']}, a separate "
                     "server so that the measured ones run unprofiled; idle waits left out; own CPU ms per request, "
                     "inflated by the profiler's own cost). By package:")
        parts.append(_machine.markdown_table(profile["by_package"], ["package", "own_ms_per_request", "share"]))
        parts.append("Top functions:")
        parts.append(_machine.markdown_table(profile["functions"], [
            "function", "where", "calls_per_request", "own_ms_per_request", "cum_ms_per_request"]))
    return "\n\n".join(parts)


def plot(results: dict[str, Any]) -> Any:
    """Throughput, p50/p99 latency (medians of the runs) and server CPU per request split at the model."""
    plt = _machine.pyplot()
    fig, (ax_rps, ax_lat, ax_cpu) = plt.subplots(1, 3, figsize=(16, 4.2))
    rows_all = results.get("summary") or results["rows"]
    modes = list(dict.fromkeys(r["mode"] for r in rows_all))
    for mode in modes:
        rows = sorted((r for r in rows_all if r["mode"] == mode and r.get("requests_per_s")),
                      key=lambda r: r["concurrency"])
        xs = [r["concurrency"] for r in rows]
        ax_rps.plot(xs, [r["requests_per_s"] for r in rows], marker="o", label=mode)
        line, = ax_lat.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"{mode} p50")
        ax_lat.plot(xs, [r["p99_ms"] for r in rows], marker="x", linestyle="--", color=line.get_color(),
                    label=f"{mode} p99")
    if results["offline"]:
        offline = float(np.mean([o["images_per_s"] for o in results["offline"]]))
        ax_rps.axhline(offline, color="grey", linestyle=":", label=f"offline batch {results['max_batch_size']}")
        ax_rps.axhline(BATCHED_RATIO * offline, color="red", linestyle=":", label=f"{BATCHED_RATIO:.0%} aim")
    for ax, ylabel in ((ax_rps, "requests / s"), (ax_lat, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(results["concurrency"], [str(c) for c in results["concurrency"]])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax_rps.set_title("POST /search throughput")
    ax_lat.set_yscale("log")
    ax_lat.set_title("POST /search latency (log scale)")
    bars = [r for r in rows_all if r.get("server_cpu_ms") is not None]
    if bars:
        labels = [f"{r['mode']}\nc={r['concurrency']}" for r in bars]
        model = [r.get("model_cpu_ms") or 0.0 for r in bars]
        outside = [r.get("outside_model_cpu_ms") or 0.0 for r in bars]
        ax_cpu.bar(range(len(bars)), model, label="model (embedder's own CPU)")
        ax_cpu.bar(range(len(bars)), outside, bottom=model, label="outside the model")
        ax_cpu.axhline(OUTSIDE_MODEL_CPU_MS, color="red", linestyle=":", label=f"{OUTSIDE_MODEL_CPU_MS} ms aim "
                                                                                  "(outside part)")
        ax_cpu.set_xticks(range(len(bars)), labels, fontsize=6, rotation=90)
        ax_cpu.set_ylabel("server CPU ms per request")
        ax_cpu.legend(fontsize=7)
    ax_cpu.set_title("Server CPU per /search (OS account)")
    fig.tight_layout()
    return fig


README_START = "<!-- benchmarks.http: generated from benchmarks/results/http.json, do not edit by hand -->"
README_END = "<!-- /benchmarks.http -->"


def _fmt(value: Any, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _model_sentence(results: dict[str, Any]) -> str:
    ready = next(iter(results.get("servers", {}).values()), {}).get("ready", {})
    model = ready.get("model")
    if not model:
        return ""
    return (f" Model: {model.get('name')} {model.get('height')}x{model.get('width')} -> {model.get('dim')}-d, gallery "
            f"of {ready.get('gallery_size')} items.")


def readme_block(data: dict[str, Any]) -> str:
    """The README's HTTP table and paragraph, from a results file (``{"machine": ..., "results": ...}``)."""
    machine, results = data["machine"], data["results"]
    pinning = results.get("pinning")
    offline = results["offline"]
    off = float(np.mean([o["images_per_s"] for o in offline])) if offline else None
    lines = [README_START, "",
             f"**HTTP load** ([http.md](benchmarks/results/http.md); {machine['cpu']}, {machine['cores_usable']} "
             f"usable cores, load average {machine['load_average_1_5_15'][0]:g} at the start; {machine['date'][:10]}; "
             f"`{machine['command']}`): `POST /search`, {results['requests_per_level']} requests per level, median of "
             f"{results.get('repeats', 1)} runs, " + (
                 f"client on core {pinning['client_cores']} and server on core {pinning['server_cores']}"
                 if pinning else "client and server unpinned") +
             f"; load generator {', '.join(results.get('clients', ['httpx']))} ({results.get('body', 'multipart')} "
             "bodies). Server CPU is the OS's account of the server process per request; the model's part is the "
             "model thread's CPU during its calls." + _model_sentence(results) + (
                 f" `before …` rows: the same servers from {results['before']['label']}, in the same run."
                 if results.get("before") else ""), "",
             "| server | concurrency | req/s | p50 / p99 ms | mean micro-batch | server CPU ms/req | model | outside "
             "the model |", "|---|---|---|---|---|---|---|---|"]
    for r in results.get("summary", []):
        lines.append(f"| {r['mode']} | {r['concurrency']} | {_fmt(r['requests_per_s'])} | {_fmt(r['p50_ms'])} / "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['mean_batch'])} | {_fmt(r['server_cpu_ms'])} | "
                     f"{_fmt(r['model_cpu_ms'])} | {_fmt(r['outside_model_cpu_ms'])} |")
    if off is not None:
        o = offline[-1]
        lines += ["", f"Offline batched embedding in the same run (batch {o['batch']}, cores {o.get('cores', 'all')}, "
                      f"{o.get('threads') or '?'} thread(s)): {off:.0f} images/s, the ceiling for micro-batched "
                      "serving on those cores."]
    checks = results.get("issue_checks") or []
    if checks:
        lines += ["", "Issue 19's aims: " + "; ".join(
            f"{c['check']}: {_fmt(c['value'])} ({c['aim']}, {'met' if c['met'] else '**not met**'})"
            for c in checks) + "."]
    lines += ["", README_END]
    return "\n".join(lines)


def update_readme(results_path: Path, readme: Path) -> None:
    """Replace the generated block of ``readme`` (between the markers) with :func:`readme_block`.

    Raises:
        UserError: the README has no such block.
    """
    import json

    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise UserError(f"{readme} has no generated HTTP block (the lines {README_START!r} ... {README_END!r})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + readme_block(json.loads(results_path.read_text())) + tail)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake.

    ``--readme-from RESULTS.json`` runs nothing: it regenerates the README's HTTP block from that file.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--readme-from" in argv:
        at = argv.index("--readme-from")
        if at + 1 >= len(argv):
            print("error: --readme-from needs a results file", file=sys.stderr)
            return 2
        try:
            update_readme(Path(argv[at + 1]), _machine.RESULTS_DIR.parents[1] / "README.md")
        except (UserError, OSError, KeyError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    return _machine.run_and_write(parse_args(argv), run, report, plot)


if __name__ == "__main__":
    sys.exit(main())
