"""What the HTTP benchmark's load generator costs: aiohttp against httpx, against a server that does no work.

``python -m benchmarks.load_generator --images DIR [--concurrency 32] [--requests 3000] [--repeats 3]
[--clients aiohttp,httpx]``

A load generator must be far cheaper than the server it measures, or it measures itself (the "bimodal"
micro-batching of earlier ``benchmarks.http`` runs came from httpx's own pauses: ``http_regimes_trace.md``
in the results). This benchmark starts a *canned* server (uvicorn with the serving protocol class, an ASGI
app that reads each ``POST /search`` body and answers a fixed ~1.5 KB search answer, no model, no gallery)
on its own core, and drives it with :func:`benchmarks._http_load.run_level` (the very code ``benchmarks.http``
drives the real server with) for each client, levels interleaved. Per run: requests/s, the client's CPU per
request and busy share (``time.process_time`` of this process), and the canned server's CPU per request (the
OS's account). The client that spends the least CPU per request and saturates last is the one to use; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _machine, _proc
from benchmarks._http_load import CLIENTS, parse_clients, run_level
from benchmarks._server import free_port, load_queries, wait_ready

# A search answer of the real shape and size (10 hits), so the client parses what it parses in benchmarks.http.
_ANSWER = json.dumps({
    "results": [{"rank": i + 1, "gallery_id": 1000 + i, "score": 0.5 - i / 100, "camera": 1, "person_label": 12,
                 "source": f"cam1/0012/{i:04d}.jpg", "track_id": None, "rerank_distance": None} for i in range(10)],
    "timings_ms": {"decode": 0.1, "embed": 2.0, "search": 0.2, "total": 2.3},
    "model": {"name": "onnxruntime", "fingerprint": "0" * 64, "dim": 1536, "height": 96, "width": 32},
}, separators=(",", ":")).encode()


async def canned_app(scope: dict, receive: Any, send: Any) -> None:
    """ASGI app: ``POST /search`` reads the body and answers :data:`_ANSWER`; ``/readyz`` answers 200."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": f"{message['type']}.complete"})
            if message["type"] == "lifespan.shutdown":
                return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    body = _ANSWER if scope["path"] == "/search" else b'{"ready":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_canned(port: int) -> None:
    """Run :func:`canned_app` under uvicorn with the serving protocol class (httptools), as ``serve`` does."""
    import uvicorn

    from serving.api.connections import protocol_class

    uvicorn.run(canned_app, host="127.0.0.1", port=port, log_level="warning", http=protocol_class(5.0, 1000))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the canned server on the server core(s), drive it with each client from the client core."""
    queries = load_queries(args.images)
    split = _proc.split_cores()
    client_cpus, server_cpus = split if split is not None else (None, None)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.load_generator", "--canned-server", str(port)],
                            preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None)
    rows: list[dict[str, Any]] = []
    restore = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, 60.0, proc)
        restore = _proc.pin(client_cpus) if client_cpus else None
        for client in args.clients:  # warm-up: connections, imports, the server's first requests
            asyncio.run(run_level(url, queries, args.concurrency, 200, 30.0, client=client))
        for repeat in range(args.repeats):
            order = args.clients if repeat % 2 == 0 else list(reversed(args.clients))
            for client in order:
                cpu_before = _proc.cpu_times(proc.pid)
                level = asyncio.run(run_level(url, queries, args.concurrency, args.requests, 120.0, client=client))
                cpu_after = _proc.cpu_times(proc.pid)
                ok = len(level.latencies_s)
                server_ms = (1e3 * (cpu_after - cpu_before).total / ok
                             if cpu_before is not None and cpu_after is not None and ok else None)
                rows.append({"client": client, "run": repeat, "ok": ok, "errors": sum(level.errors.values()),
                             "requests_per_s": ok / level.elapsed_s, "client_cpu_ms": 1e3 * level.client_cpu_s / ok,
                             "client_busy": level.client_cpu_s / level.elapsed_s, "server_cpu_ms": server_ms,
                             "p50_ms": float(np.median(level.latencies_s)) * 1e3})
    finally:
        if restore is not None:
            _proc.pin(restore)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    summary = []
    for client in args.clients:
        mine = [r for r in rows if r["client"] == client]
        summary.append({"client": client, "runs": len(mine), **{
            k: float(np.median([r[k] for r in mine if r[k] is not None]))
            for k in ("requests_per_s", "client_cpu_ms", "client_busy", "server_cpu_ms", "p50_ms")}})
    return {"concurrency": args.concurrency, "requests": args.requests, "repeats": args.repeats,
            "pinning": None if split is None else {"client_cores": _proc.describe(client_cpus),
                                                   "server_cores": _proc.describe(server_cpus)},
            "rows": rows, "summary": summary}


def report(results: dict[str, Any]) -> str:
    pinning = results["pinning"]
    where = (f"client on core {pinning['client_cores']}, canned server on core {pinning['server_cores']}" if pinning
             else "client and server unpinned")
    return "\n\n".join([
        (f"`POST /search` at concurrency {results['concurrency']}, {results['requests']} requests per run, "
        f"{results['repeats']} runs per client (interleaved), {where}. The server is a canned uvicorn app "
        "(serving's protocol class, httptools) that reads each body and answers a fixed 10-hit search answer: "
        "no model, no gallery, so the rate is what the client can post. `client_cpu_ms`: this process's CPU "
        "per answered request; `client_busy`: its share of the wall time; `server_cpu_ms`: the canned server's "
        "CPU per request (OS account). Medians:"),
        _machine.markdown_table(results["summary"], ["client", "runs", "requests_per_s", "client_cpu_ms",
                                                     "client_busy", "server_cpu_ms", "p50_ms"]),
        "Every run:",
        _machine.markdown_table(results["rows"], ["client", "run", "ok", "errors", "requests_per_s", "client_cpu_ms",
                                                  "client_busy", "server_cpu_ms", "p50_ms"])])


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    fig, (ax_rate, ax_cpu) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["client"] for r in results["summary"]]
    ax_rate.bar(names, [r["requests_per_s"] for r in results["summary"]])
    ax_rate.set_ylabel("requests/s (canned server)")
    ax_cpu.bar(names, [r["client_cpu_ms"] for r in results["summary"]])
    ax_cpu.set_ylabel("client CPU ms per request")
    fig.suptitle(f"Load generator cost at concurrency {results['concurrency']}")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--canned-server"]:
        serve_canned(int(argv[1]))
        return 0
    parser = _machine.benchmark_parser("load_generator", __doc__)
    parser.add_argument("--images", type=Path, required=True, help="SYSU-MM01-layout root with cam3/cam6 crops")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--requests", type=int, default=3000, help="requests per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per client")
    parser.add_argument("--clients", type=parse_clients, default=list(CLIENTS), help="comma-separated: aiohttp,httpx")
    _machine.add_output_args(parser, "load_generator", progress=False)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.repeats < 1:
        parser.error("--concurrency, --requests and --repeats must be positive")
    if not args.images.is_dir():
        print(f"error: image folder not found: {args.images}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    status = _machine.run_and_write(args, run, report, plot)
    print(f"took {time.perf_counter() - started:.0f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
