"""HTTP load benchmark: requests/s and p50/p95/p99 latency of ``POST /search``, micro-batching on and off.

``python -m benchmarks.http --model M.onnx --gallery DIR --images DIR [--concurrency 1,8,32] [--requests 400]
[--duration-cap 60] [--repeats 3] [--before DIR] [--client aiohttp,httpx] [--body multipart|raw] [--no-pin]
[--quick]``; ``python -m benchmarks.http --readme-from RESULTS.json`` (or ``--docs-from``) runs nothing and
regenerates the HTTP block of ``docs/benchmarks.md`` from a results file.

It starts two real servers (``python -m serving serve``) on free loopback ports, one with micro-batching
and one without (``--max-batch-size 1``), and drives both with the same closed-loop load
(:mod:`benchmarks._http_load`): per concurrency level a fixed number of real infrared crops, stopped early
at the duration cap. The servers take turns level by level (the order flips every level), so a burst of
load from other processes on a shared machine hits both alike. ``--url`` measures a running server instead.

Per level (:mod:`benchmarks._http_rows`): requests/s, client-side latency percentiles, errors, the server's
decode / embed / search split, model calls and mean micro-batch from ``/metrics``, and the CPU the OS charged
the server process per answered request, split at the model. Each level runs ``--repeats`` times and the
medians are reported. The baseline in the same run: the same embedder, in this process, embedding the same
pre-decoded crops in batches of the max batch size (after LitServe's parity tests); the owner's aims are
checked against it and printed, never asserted.

Where the machine has two or more usable cores, the load generator is pinned to the first and the servers to
the others (``sched_setaffinity``, as ``taskset -c``), so the client's work neither counts as the server's nor
steals its core. A last level goes to a separate, cProfile'd server. ``--before DIR`` adds the servers of
another checkout (a ``git worktree`` of an earlier commit) to the same run, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import _machine, _proc
from benchmarks._http_load import BODY_FORMS, parse_clients, run_level
from benchmarks._http_report import DOCS_PAGE, plot, report, update_docs
from benchmarks._http_rows import (
    BATCHED_RATIO,
    MIN_MEAN_BATCH,
    OUTSIDE_MODEL_CPU_MS,
    TARGET_RATIO,
    aim_checks,
    level_row,
    summarize_runs,
    target_check,
)
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
from xmreid.errors import UserError

logger = logging.getLogger(__name__)


def offline_reference(model: Path, queries: Sequence[Query], batch: int, *, rounds: int = 5,
                      min_images: int = 64, cpus: set[int] | None = None) -> dict[str, Any]:
    """Images/s of the server's embedder embedding pre-decoded crops in batches of ``batch``, in this process.

    The same loader (``serving.embedders.load_embedder``), the same decoder and the same crops as the
    server, so the only difference from serving is everything HTTP and batching add. With ``cpus`` it
    runs on the server's cores (this thread is pinned to them while the model loads and runs, so ONNX
    Runtime sizes its pool to them, as it does in the server), i.e. with the same thread count.
    """
    from serving.core.imageio import decode_image
    from serving.embedders import load_embedder

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
    """The command line; exits with argparse's usage message on a mistake."""
    from serving.core.config import Settings

    defaults = Settings.model_fields
    parser = _machine.benchmark_parser("http", __doc__)
    parser.add_argument("--model", type=Path, help="exported model (.onnx); also used for the offline reference")
    parser.add_argument("--gallery", type=Path, help="gallery directory built with --model")
    parser.add_argument("--images", type=Path, help="SYSU-MM01-layout root with cam3/cam6 crops (required to run)")
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
    _machine.add_output_args(parser, "http")
    docs = parser.add_argument_group("the benchmarks page (runs nothing)")
    docs.add_argument("--readme-from", "--docs-from", dest="docs_from", type=Path, default=None, metavar="RESULTS",
                      help="regenerate the generated HTTP block of --docs from this results file (.json) and exit")
    docs.add_argument("--docs", type=Path, default=DOCS_PAGE,
                      help="the page whose block --readme-from rewrites (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.docs_from is not None:
        return args
    if args.images is None:
        parser.error("--images is required (or --readme-from RESULTS.json to regenerate the benchmarks page)")
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
    results["issue_checks"] = aim_checks(results)  # the key older results files and the page's block read
    return results



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



def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``, or, with ``--readme-from``,
    regenerate the HTTP block of the benchmarks page; 1 (after one ``error:`` line) on a user mistake."""
    args = parse_args(argv)
    if args.docs_from is not None:
        try:
            update_docs(args.docs_from, args.docs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"updated the HTTP block of {args.docs}")
        return 0
    return _machine.run_and_write(args, run, report, plot)


if __name__ == "__main__":
    sys.exit(main())
