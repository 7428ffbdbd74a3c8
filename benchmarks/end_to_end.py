"""End-to-end benchmark: where the time of one ``POST /search`` goes, against the bare model time.

``python -m benchmarks.end_to_end --model M.onnx --gallery DIR --images DIR [--requests 200]
[--variants default,max-wait-0] [--profile]``

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

``--variants`` adds servers that differ in one setting or one patch (``VARIANTS``), measured the same way
and interleaved with the default, so a proposed fix is measured before anyone edits ``serving/``.
``--profile`` runs the default server under cProfile and lists the functions where its event-loop
thread spends its time (everything HTTP and framework: the worker threads are timed by ``timings_ms``).
"""

from __future__ import annotations

import argparse
import logging
import os
import pstats
import signal
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
from benchmarks._server import ServerProcess, scrape
from benchmarks.http import Query, load_queries
from serving.errors import UserError

logger = logging.getLogger(__name__)

TARGET_OVERHEAD = 0.15  # /search p50 at concurrency 1 <= (1 + this) x bare model p50 (owner's target)
STAGES = ("model", "batching", "decode", "search", "http")

FINDINGS = """## Where the overhead is, and the proposed fixes

Found with this script's variants (each applies one change to a server by monkeypatching; compare its row
with `default`) and the cProfile tables. Line numbers are those of serving/ when this was written. The three
stages that should be sub-millisecond (decode, search, HTTP) are slow because of contention for the cores,
not because of their own work: compare them with the bare stages above.

1. **ONNX Runtime threads spin-wait** (`serving/embedders/onnxruntime_embedder.py:70-71`: a default
   `SessionOptions` with `intra_op_num_threads` = all usable cores). After each model call its threads busy-wait
   for more work, holding the cores that the same process needs to decode, search and parse HTTP; when the
   machine has more runnable threads than cores, the model itself slows down too (compare the bare model with
   and without spinning). Fix: `options.add_session_config_entry("session.intra_op.allow_spinning", "0")`
   (or a setting for it, off by default) (variant `ort-no-spin`).
2. **FAISS searches one query with every OpenMP thread** (`serving/state.py:205` -> `index/faiss_backend.py:371`).
   A flat search of one query over a small gallery is sub-millisecond, but its parallel region ends in a
   barrier that waits for whichever OpenMP thread the OS descheduled: tens of ms. Fix:
   `faiss.omp_set_num_threads(1)` in the searching thread when `queries x gallery size` is small (the setting
   is per calling thread, so batch searches elsewhere keep their threads) (variant `faiss-1-thread`).
3. **A lone request waits `max_wait_ms` for company** (`serving/batching.py:225`, default 5 ms in
   `serving/core/config.py:47`). At concurrency 1 nobody joins. With one model slot the worker only collects
   while the model is idle, and requests that arrive while it is busy form the next batch anyway, so
   `--max-wait-ms 0` still batches under load (`python -m benchmarks.http --server-variant fixes` measures
   it). A finer fix: wait only while other /search requests are still being decoded (a counter around
   `decode_uploads` in `serving/api/search.py:59`) (variant `max-wait-0`).
4. **Thread hand-offs for tiny work**: FastAPI runs the plain-`def` dependency `get_runtime`
   (`serving/deps.py:26`) in its thread pool on every request (`async def` avoids it: variant `async-deps`),
   and `serving/state.py:184-201` decode in a pool and search via `asyncio.to_thread` even when the work takes
   well under a millisecond (variant `inline-small`: inline below 64 KiB / 10,000 items). Each hop is two
   context switches, each a scheduler latency on a busy machine.
5. **HTTP stack**: uvicorn on asyncio + h11 parses every request in pure Python (`serving/server.py:113`);
   `uvicorn[standard]` (uvloop + httptools) is the usual fix (variant `uvloop-httptools`, needs
   `pip install uvloop httptools`). FastAPI's dependency solving, starlette's multipart form parsing and h11
   are the largest Python items in the event-loop profile, about a millisecond per request together.

What remains in `http` is the client (httpx building the multipart body and parsing the JSON) and loopback
TCP, which no server-side change removes: it bounds how close a small model can get to its bare time."""



# -- proposed fixes, applied in a server process by monkeypatching (measured before anyone edits serving/) --


class _NoSpinSessionOptions:
    """Marker base so the patch is not applied twice."""


def _no_spin_options_class() -> type:
    import onnxruntime as ort

    base = ort.SessionOptions
    if issubclass(base, _NoSpinSessionOptions):
        return base

    class NoSpinSessionOptions(base, _NoSpinSessionOptions):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Idle intra-op threads sleep instead of spin-waiting, leaving the cores to decode, search, HTTP.
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")

    return NoSpinSessionOptions


def patch_ort_no_spin() -> None:
    """Every ONNX Runtime session created from now on has ``session.intra_op.allow_spinning=0``."""
    import onnxruntime as ort

    ort.SessionOptions = _no_spin_options_class()


def patch_faiss_one_thread() -> None:
    """Gallery searches run with one OpenMP thread (set in the searching thread: the setting is per thread).

    One query over a small gallery gains nothing from a parallel region, and its barrier waits for
    whichever sibling thread the OS descheduled.
    """
    import faiss

    from serving import state

    search_sync = state.Runtime._search_sync

    def one_thread_search(self: Any, *args: Any, **kwargs: Any) -> Any:
        faiss.omp_set_num_threads(1)
        return search_sync(self, *args, **kwargs)

    state.Runtime._search_sync = one_thread_search  # type: ignore[method-assign]


def patch_uvloop_httptools() -> None:
    """uvicorn runs on uvloop with the httptools parser (what ``uvicorn[standard]`` installs)."""
    import uvicorn

    run = uvicorn.run
    uvicorn.run = lambda *args, **kwargs: run(*args, **{**kwargs, "loop": "uvloop", "http": "httptools"})


INLINE_DECODE_BYTES = 64 * 1024  # a JPEG crop this small decodes in well under a millisecond
INLINE_SEARCH_ITEMS = 10_000  # query rows x gallery items searched on the loop (~1 ms for a flat index)


def patch_inline_small() -> None:
    """Decode small uploads and search small galleries on the event loop instead of in a worker thread.

    A thread hand-off costs two context switches, which on a busy machine are each a scheduler latency;
    for sub-millisecond work that is more than the work. Large uploads and galleries keep their threads
    so the loop is never blocked for long.
    """
    from serving import state
    from serving.imageio import decode_image

    decode, search = state.Runtime.decode, state.Runtime.search

    async def inline_decode(self: Any, data: bytes) -> np.ndarray:
        if len(data) <= INLINE_DECODE_BYTES:
            return decode_image(data, int(self.embedder.height), int(self.embedder.width), self.limits)
        return await decode(self, data)

    async def inline_search(self: Any, vectors: np.ndarray, k: int, cameras: Any) -> Any:
        if len(vectors) * self.size <= INLINE_SEARCH_ITEMS:
            return self._search_sync(vectors, k, cameras)
        return await search(self, vectors, k, cameras)

    state.Runtime.decode = inline_decode  # type: ignore[method-assign]
    state.Runtime.search = inline_search  # type: ignore[method-assign]


def patch_async_dependencies() -> None:
    """``serving.deps.get_runtime`` runs on the event loop instead of in FastAPI's thread pool.

    FastAPI runs every plain ``def`` dependency through ``run_in_threadpool``: one thread hand-off per
    request for an attribute lookup. Must run before ``serving.api`` is imported (routes read the
    dependency when they are declared), which the launcher guarantees.
    """
    import inspect

    from serving import deps

    sync = deps.get_runtime

    async def get_runtime(request: Any) -> Any:
        return sync(request)

    get_runtime.__signature__ = inspect.signature(sync, eval_str=True)  # type: ignore[attr-defined]
    object.__setattr__(deps.RuntimeDep.__metadata__[0], "dependency", get_runtime)  # a frozen dataclass


PATCHES: dict[str, Any] = {"ort-no-spin": patch_ort_no_spin, "faiss-1-thread": patch_faiss_one_thread,
                           "uvloop-httptools": patch_uvloop_httptools, "inline-small": patch_inline_small,
                           "async-deps": patch_async_dependencies}


def apply_patches(names: Sequence[str]) -> None:
    """Apply the named :data:`PATCHES` (called in the server process before ``serving`` starts)."""
    for name in names:
        PATCHES[name]()


@dataclass(frozen=True)
class Variant:
    """A server configuration to measure: extra ``serve`` options and/or patches applied before it starts.

    Attributes:
        description: what differs from the default, for the report.
        args: extra ``python -m serving serve`` options.
        patches: names in :data:`PATCHES`.
        needs: modules the patches import that the requirements do not install; without them the variant
            is skipped (or they are found through ``--extra-path``).
    """

    description: str
    args: tuple[str, ...] = ()
    patches: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()


_FIXES = ("ort-no-spin", "faiss-1-thread")
VARIANTS: dict[str, Variant] = {
    "default": Variant("the server's defaults"),
    "max-wait-0": Variant("`--max-wait-ms 0`: a lone request does not wait for company", ("--max-wait-ms", "0")),
    "ort-no-spin": Variant("ONNX Runtime threads do not spin-wait (`session.intra_op.allow_spinning=0`)",
                           patches=("ort-no-spin",)),
    "faiss-1-thread": Variant("FAISS searches with one OpenMP thread", patches=("faiss-1-thread",)),
    "uvloop-httptools": Variant("uvicorn on uvloop + httptools (`uvicorn[standard]`) instead of asyncio + h11",
                                patches=("uvloop-httptools",), needs=("uvloop", "httptools")),
    "inline-small": Variant(f"decode uploads <= {INLINE_DECODE_BYTES // 1024} KiB and search <= "
                            f"{INLINE_SEARCH_ITEMS} items on the event loop (no thread hand-off)",
                            patches=("inline-small",)),
    "async-deps": Variant("the `get_runtime` dependency is `async def` (no thread-pool hop per request)",
                          patches=("async-deps",)),
    "fixes": Variant("max-wait-0 + ort-no-spin + faiss-1-thread", ("--max-wait-ms", "0"), _FIXES),
    "fixes+no-hops": Variant("fixes + inline-small + async-deps", ("--max-wait-ms", "0"),
                             (*_FIXES, "inline-small", "async-deps")),
    "fixes+uvloop": Variant("fixes + uvloop-httptools", ("--max-wait-ms", "0"), (*_FIXES, "uvloop-httptools"),
                            needs=("uvloop", "httptools")),
    "all": Variant("fixes + no-hops + uvloop-httptools", ("--max-wait-ms", "0"),
                   (*_FIXES, "inline-small", "async-deps", "uvloop-httptools"), needs=("uvloop", "httptools")),
}


def missing_modules(variant: Variant, extra_path: Path | None) -> list[str]:
    """Modules ``variant`` needs that neither this interpreter nor ``extra_path`` provides."""
    import importlib.util

    missing = []
    for name in variant.needs:
        if importlib.util.find_spec(name) is not None:
            continue
        if extra_path is not None and any((extra_path / f).exists() for f in (name, f"{name}.py")):
            continue
        missing.append(name)
    return missing


_LAUNCH = """
import sys
from benchmarks.end_to_end import apply_patches
apply_patches({patches!r})
{profile}
from serving.__main__ import main
sys.exit(main(sys.argv[1:]))
"""

# cProfile of the main (event-loop) thread, switched on and off by SIGUSR1 so that start-up and shutdown
# (imports, model loading) stay out of it and only the requests sent while it is on are profiled. {timer}
# is cProfile's clock: empty for its default (wall) clock, or e.g. ``time.thread_time``.
_PROFILE = """
import cProfile, signal, time
_prof, _on = cProfile.Profile({timer}), [False]
def _toggle(signum, frame):
    if _on[0]:
        _prof.disable()
        _prof.dump_stats({path!r})
    else:
        _prof.enable()
    _on[0] = not _on[0]
signal.signal(signal.SIGUSR1, _toggle)
"""


def launcher(variant: Variant, profile_path: Path | None = None, timer: str = "") -> list[str]:
    """Interpreter arguments that apply ``variant``'s patches (and the cProfile switch), then run ``serving``.

    ``timer``: cProfile's clock as a Python expression (default: cProfile's own wall clock).
    """
    if not variant.patches and profile_path is None:
        return ["-m", "serving"]
    profile = _PROFILE.format(path=str(profile_path), timer=timer) if profile_path is not None else ""
    return ["-c", _LAUNCH.format(patches=list(variant.patches), profile=profile)]


@dataclass
class Samples:
    """Per-request measurements of one server (client wall, server timings) or of the bare stages."""

    wall_ms: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    errors: int = 0


class BareStages:
    """The serving stages called directly in this process: decode, model, gallery search + metadata."""

    def __init__(self, model: Path, gallery: Path, top_k: int) -> None:
        from index import Gallery
        from serving.embedders import load_embedder

        self.embedder = load_embedder(model)
        self.gallery = Gallery.load(gallery, fingerprint=self.embedder.fingerprint, dim=int(self.embedder.dim))
        self.top_k = top_k
        self.samples: dict[str, list[float]] = {"decode": [], "model": [], "search": [], "model_no_spin": []}
        self.no_spin = None
        if self.embedder.name == "onnxruntime":  # the same model with ort-no-spin, for a second reference
            import onnxruntime as ort

            shipped = ort.SessionOptions
            ort.SessionOptions = _no_spin_options_class()
            try:
                self.no_spin = load_embedder(model)
            finally:
                ort.SessionOptions = shipped
        self._image: np.ndarray | None = None

    def run(self, query: Query) -> None:
        from serving.imageio import decode_image

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
        self._image = image

    def reset(self) -> None:
        """Forget the samples so far (the warm-up's)."""
        self.samples = {name: [] for name in self.samples}

    def run_no_spin(self) -> None:
        """The model alone with ort-no-spin, on the image :meth:`run` decoded last."""
        if self.no_spin is None or self._image is None:
            return
        t0 = time.perf_counter()
        self.no_spin.embed(self._image[None])
        self.samples["model_no_spin"].append(1e3 * (time.perf_counter() - t0))

    def close(self) -> None:
        self.embedder.close()
        if self.no_spin is not None:
            self.no_spin.close()


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


def profile_summary(path: Path, requests: int, top: int = 12) -> dict[str, list[dict[str, Any]]]:
    """Own time of the event-loop thread per request: by package, and the most expensive functions.

    Idle waiting (the loop's ``select``/``epoll``, lock waits) is left out: it is not work, and at
    concurrency 1 it is mostly the loop waiting for the worker threads that ``timings_ms`` already times.
    """
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    functions, packages = [], {}
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in stats.items():
        if _idle(func):
            continue
        package = _package(filename, func)
        packages[package] = packages.get(package, 0.0) + tottime
        functions.append({"function": func, "where": f"{_short(filename)}:{line}", "package": package,
                          "calls_per_request": ncalls / requests, "own_ms_per_request": 1e3 * tottime / requests,
                          "cum_ms_per_request": 1e3 * cumtime / requests})
    total = sum(packages.values()) or 1.0
    by_package = [{"package": k, "own_ms_per_request": 1e3 * v / requests, "share": v / total}
                  for k, v in sorted(packages.items(), key=lambda kv: -kv[1])]
    functions.sort(key=lambda r: -r["own_ms_per_request"])
    return {"by_package": by_package, "functions": functions[:top]}


_IDLE = ("poll", "select", "acquire", "wait", "sleep", "control")


def _idle(func: str) -> bool:
    # Built-ins show as "<method 'poll' of 'select.epoll' objects>"; match the method name only.
    return func.startswith("<") and any(f"'{name}'" in func for name in _IDLE)


def _package(filename: str, func: str) -> str:
    if filename == "~":  # a C function: name it by its type, e.g. "builtin: socket.send"
        return "builtins (C)"
    for marker in ("site-packages/", "dist-packages/"):
        if marker in filename:
            return filename.split(marker, 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/work/main/" in filename or "/serving/" in filename:
        return "serving (this project)"
    return "python stdlib"


def _short(filename: str) -> str:
    for marker in ("site-packages/", "dist-packages/", "/work/main/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename.rsplit("/", 2)[-1] if "/" in filename else filename


def profile_pass(server: ServerProcess, client: httpx.Client, queries: Sequence[Query], args: argparse.Namespace,
                 path: Path) -> dict[str, Any]:
    """Send ``args.profile_requests`` searches with the server's cProfile switched on; summarise it."""
    if server.pid is None:
        raise RuntimeError("profile_pass needs a started server")
    os.kill(server.pid, signal.SIGUSR1)
    time.sleep(0.2)
    done = Samples()
    for i in range(args.profile_requests):
        post(client, queries[i % len(queries)], args.top_k, done)
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not path.is_file():
        raise UserError(f"the profiled server wrote no profile to {path}")
    time.sleep(0.5)  # dump_stats writes in one go, but give it a moment to finish
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
    active = []
    results["skipped"] = {}
    for name in args.variants:
        missing = missing_modules(VARIANTS[name], args.extra_path)
        if missing:
            results["skipped"][name] = (f"needs {', '.join(missing)} (pip install them, or pip install --target DIR "
                                        "and pass --extra-path DIR)")
            logger.warning("skipping variant %s: %s", name, results["skipped"][name])
        else:
            active.append(name)
    samples = {name: Samples() for name in active}
    metrics: dict[str, dict[str, float]] = {}
    profile_path = Path(tempfile.mkdtemp(prefix="e2e-profile-")) / "server.prof" if args.profile else None
    clients: dict[str, httpx.Client] = {}
    try:
        for name in active:
            variant = VARIANTS[name]
            prof = profile_path if name == "default" else None
            env = {}
            if variant.needs and args.extra_path is not None:  # only this server sees the extra packages
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.extra_path), os.environ.get("PYTHONPATH")]))
            servers[name] = ServerProcess(args.model, args.gallery, variant.args, env=env,
                                          launcher=launcher(variant, prof)).start()
            clients[name] = httpx.Client(base_url=servers[name].url, timeout=120.0)
            results["variants"][name] = {"description": variant.description, "server_args": list(variant.args),
                                         "patches": list(variant.patches), "command": " ".join(servers[name].command)}
        for i in range(args.warmup):  # lazy initialisation (first ONNX Runtime run, first FAISS search)
            bare.run(queries[i % len(queries)])
            for name in active:
                post(clients[name], queries[i % len(queries)], args.top_k, Samples())
            bare.run_no_spin()
        bare.reset()
        metrics = {name: scrape(servers[name].url) for name in active}
        steps = ["bare", "bare-no-spin", *active]
        with tqdm(total=args.requests * len(steps), desc="end-to-end", unit="req", disable=args.no_progress) as bar:
            for block, start in enumerate(range(0, args.requests, args.block)):
                stop = min(args.requests, start + args.block)
                for step in steps[block % len(steps):] + steps[:block % len(steps)]:  # rotate who goes first
                    time.sleep(0.05)  # let the previous block's spinning threads go idle
                    for i in range(start, stop):
                        if step == "bare":
                            bare.run(queries[i % len(queries)])
                        elif step == "bare-no-spin":
                            bare.run_no_spin()
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
    no_spin = results["bare"].get("model_no_spin", {}).get("p50_ms")
    for name, v in results["variants"].items():
        v["overhead_vs_bare_model"] = v["wall_p50_ms"] / bare_model - 1.0
        v["target_met"] = v["overhead_vs_bare_model"] <= TARGET_OVERHEAD
        if no_spin:
            v["overhead_vs_bare_model_no_spin"] = v["wall_p50_ms"] / no_spin - 1.0
    return results


def report(results: dict[str, Any]) -> str:
    bare = results["bare"]
    parts = [f"Concurrency 1, {results['requests']} requests per server, top_k {results['top_k']}; bare stages and "
             f"servers interleaved in blocks of {results['block']}. Bare model (in-process `embedder.embed` on one "
             f"pre-decoded crop): p50 {bare['model']['p50_ms']:.2f} ms, p95 {bare['model']['p95_ms']:.2f} ms; bare "
             f"decode p50 {bare['decode']['p50_ms']:.2f} ms; bare search + metadata p50 {bare['search']['p50_ms']:.2f} ms."]
    if "model_no_spin" in bare:
        parts[0] += (f" The same model loaded with ort-no-spin: p50 {bare['model_no_spin']['p50_ms']:.2f} ms "
                     "(column `vs_bare_no_spin`).")
    rows = []
    for name, v in results["variants"].items():
        row = {"server": name, "p50_ms": v["wall_p50_ms"], "p95_ms": v["wall_p95_ms"], "mean_ms": v["wall_mean_ms"]}
        row.update({f"{k}_ms": v["ms"][k] for k in STAGES})
        row["vs_bare_model"] = f"{v['overhead_vs_bare_model']:+.0%}"
        if "overhead_vs_bare_model_no_spin" in v:
            row["vs_bare_no_spin"] = f"{v['overhead_vs_bare_model_no_spin']:+.0%}"
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
    parts.append("Servers: " + "; ".join(f"`{name}`: {v['description']}" for name, v in results["variants"].items()))
    for name, reason in results.get("skipped", {}).items():
        parts.append(f"Skipped `{name}`: {reason}.")
    if results.get("profile"):
        prof = results["profile"]
        parts.append(f"Event-loop thread of the `default` server under cProfile ({prof['requests']} requests after "
                     f"the timed ones; {prof['wall_mean_ms_under_profiler']:.1f} ms/request with the profiler on). "
                     "Own time per request, idle waits left out, by package:")
        parts.append(_machine.markdown_table(prof["by_package"]))
        parts.append("Most expensive functions (own time):")
        parts.append(_machine.markdown_table(prof["functions"], ["function", "where", "calls_per_request",
                                                                  "own_ms_per_request", "cum_ms_per_request"]))
    parts.append(FINDINGS)
    return "\n\n".join(parts)


def plot(results: dict[str, Any]) -> Any:
    """Stacked mean ms per stage for each server, under the bare model bars (means, so the stages add up)."""
    plt = _machine.pyplot()
    names = list(results["variants"])
    bare = {"bare model": results["bare"]["model"]["mean_ms"]}
    if "model_no_spin" in results["bare"]:
        bare["bare model, no spin"] = results["bare"]["model_no_spin"]["mean_ms"]
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
    parser = argparse.ArgumentParser(prog="python -m benchmarks.end_to_end", description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--extra-path", type=Path, help="a folder of packages some variants need (uvloop, "
                        "httptools: `pip install --target DIR ...`), given only to those servers")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    parser.add_argument("--name", default="end_to_end", help="results file stem")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
