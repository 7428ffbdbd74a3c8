"""The closed-loop load generator of the HTTP benchmarks: post searches with a fixed number in flight.

``benchmarks.http`` drives the real server with it and ``benchmarks.load_generator`` measures what it costs
against a canned server; both call :func:`run_level`, so the load the server sees and the load whose own
cost was measured are the same code.

The default client is aiohttp: a load generator must spend far less CPU per request than the server it
measures, or it measures itself. httpx stays selectable to compare; the figures for both clients are in
``benchmarks/results/load_generator.md``, and why the collector is paused during a level in
``benchmarks/results/http_regimes_trace.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from benchmarks import _server
from benchmarks._server import Query

BODY_FORMS = ("multipart", "raw")
CLIENTS = ("aiohttp", "httpx")
SEARCH_OK = 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"}'
MODEL_CPU = "xmreid_model_cpu_seconds_total"


def endpoint(images_per_request: int) -> str:
    """The route a level posts to: ``/search`` for one crop per request, ``/search/batch`` for several."""
    return "/search" if images_per_request == 1 else "/search/batch"


def answered(images_per_request: int) -> str:
    """The ``/metrics`` counter of that route's 200 answers."""
    return SEARCH_OK.replace('"/search"', f'"{endpoint(images_per_request)}"')


def parse_clients(text: str) -> list[str]:
    """``--client``'s value: known load generators, comma-separated, in order, each once (argparse type)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CLIENTS))
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown client(s) {', '.join(unknown) or '(none)'}; valid: "
                                         f"{', '.join(CLIENTS)}")
    return list(dict.fromkeys(names))


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
    answered (a closed loop), so the number in flight never exceeds ``concurrency``; the client keeps
    ``concurrency`` keep-alive connections and its garbage collector is paused for the level
    (:func:`benchmarks._server.collector_paused`).

    Args:
        url: server base URL.
        queries: request bodies, used in turn.
        concurrency: requests in flight.
        requests: requests to send (fewer if the duration cap hits first).
        duration_cap_s: no new request starts after this many seconds.
        top_k: ``top_k`` of each search.
        timeout_s: per-request timeout (a timeout counts as an error).
        body: ``multipart`` (the ``image`` form field, what most clients send) or ``raw`` (the file as the
            whole body with its image ``Content-Type``).
        client: ``aiohttp`` (default: the cheaper client) or ``httpx``.
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
