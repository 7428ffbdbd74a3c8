"""How long a full garbage collection stops the server, with and without ``serving.core.heap.freeze``.

``python -m benchmarks.gc_pause --model M.onnx --gallery DIR [--rounds 7] [--garbage 20000]``

CPython's full (generation-2) collection walks every container object the process tracks, and a server's
are mostly the ones it built to start: modules, the FastAPI app, the model session, the gallery. While it
runs, the event loop and the model thread both wait (it holds the GIL). This benchmark builds that heap
the way ``python -m serving serve`` does (``load_components`` + ``create_app``, in this process), adds
``--garbage`` short-lived objects as a stand-in for requests in flight, and times ``gc.collect()`` in
both states side by side: unfrozen, then after :func:`serving.core.heap.freeze` (what ``serve`` does once
it has loaded). Median of ``--rounds`` collections each; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import _machine


def _collections(rounds: int, garbage: int) -> dict[str, float]:
    samples = []
    for _ in range(rounds):
        churn = [{"hit": [i]} for i in range(garbage)]  # containers the collector must look at
        started = time.perf_counter()
        gc.collect()
        samples.append(time.perf_counter() - started)
        del churn
    return {"median_ms": 1e3 * statistics.median(samples), "max_ms": 1e3 * max(samples),
            "tracked_objects": len(gc.get_objects())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from serving.app import create_app
    from serving.core import heap
    from serving.core.config import Settings
    from serving.runtime.state import load_components

    settings = Settings(model=args.model, gallery=args.gallery, read_only=True)  # never takes the writer lock
    embedder, gallery = load_components(settings)
    app = create_app(settings, embedder=embedder, gallery=gallery)
    try:
        unfrozen = _collections(args.rounds, args.garbage)
        heap.freeze()
        try:
            frozen = {**_collections(args.rounds, args.garbage), "frozen_objects": gc.get_freeze_count()}
        finally:
            heap.unfreeze()
    finally:
        del app
        gallery.close()
        close = getattr(embedder, "close", None)
        if callable(close):
            close()
    return {"model": str(args.model), "gallery": str(args.gallery), "gallery_size": len(gallery),
            "rounds": args.rounds, "garbage": args.garbage,
            "rows": [{"heap": "as loaded", **unfrozen}, {"heap": "frozen (serve)", **frozen}]}


def report(results: dict[str, Any]) -> str:
    return "\n\n".join([
        (f"Full collections (`gc.collect()`) in a process holding what `serve` loads: model `{results['model']}`, "
        f"gallery `{results['gallery']}` ({results['gallery_size']} items), the FastAPI app; plus "
        f"{results['garbage']} short-lived containers per collection. Median and max of {results['rounds']} "
        "collections each; `tracked_objects`: what stays in the collector's generations (walked by every full "
        "collection) once the churn is freed."),
        _machine.markdown_table(results["rows"], ["heap", "median_ms", "max_ms", "tracked_objects",
                                                  "frozen_objects"])])


def plot(results: dict[str, Any]) -> Any:
    plt = _machine.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar([r["heap"] for r in results["rows"]], [r["median_ms"] for r in results["rows"]])
    ax.set_ylabel("full collection, ms (median)")
    ax.set_title("A full GC pause of the serving heap")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = _machine.benchmark_parser("gc_pause", __doc__)
    parser.add_argument("--model", type=Path, required=True, help="exported model (.onnx)")
    parser.add_argument("--gallery", type=Path, required=True, help="gallery directory built with --model")
    parser.add_argument("--rounds", type=int, default=7, help="collections timed per state")
    parser.add_argument("--garbage", type=int, default=20_000, help="short-lived containers alive at each collection")
    _machine.add_output_args(parser, "gc_pause", progress=False)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.garbage < 0:
        parser.error("--rounds must be positive and --garbage >= 0")
    for path, what in ((args.model, "model file"), (args.gallery, "gallery directory")):
        if not path.exists():
            print(f"error: {what} not found: {path}", file=sys.stderr)
            return 1
    return _machine.run_and_write(args, run, report, plot)


if __name__ == "__main__":
    raise SystemExit(main())
