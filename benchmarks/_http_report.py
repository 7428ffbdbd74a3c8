"""The HTTP benchmark's presentation: the Markdown report, the plot, and the block of the benchmarks page.

The benchmarks page (``docs/benchmarks.md``) quotes the latest HTTP run in a block between two marker
lines; :func:`update_docs` regenerates that block from a results file, so the figures on the page are
never typed by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks import _machine
from benchmarks._http_load import endpoint
from benchmarks._http_rows import BATCHED_RATIO, OUTSIDE_MODEL_CPU_MS, offline_images_per_s
from xmreid.errors import UserError

DOCS_PAGE = _machine.REPO / "docs" / "benchmarks.md"


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
    parts.append("\n".join(f"- `{mode}`: `{_machine.shown_command(s['command']) if s['command'] else s['url']}`" + (
        f" (from {_machine.shown_command(s['tree'])})" if s.get("tree") not in (None, "this checkout") else "")
        for mode, s in results["servers"].items()))
    if results.get("before"):
        extra = results["before"].get("args")
        parts.append(f"`before …` servers run the code of {results['before']['label']} "
                     f"({_machine.shown_command(results['before']['tree'])}), "
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
    model = _model_sentence(results, fingerprint=True)
    if model:
        parts.append(model)
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
        parts.append("Aims (medians of the runs, `batching` server; printed, never asserted):")
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
    offline = offline_images_per_s(results)
    if offline is not None:
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


DOCS_START = "<!-- benchmarks.http: generated from benchmarks/results/http.json, do not edit by hand -->"
DOCS_END = "<!-- /benchmarks.http -->"


_fmt = _machine.format_number


def _model_sentence(results: dict[str, Any], *, fingerprint: bool = False) -> str:
    """What the servers loaded, from the first server's ``/readyz`` answer ("" when unknown)."""
    ready = next(iter(results.get("servers", {}).values()), {}).get("ready") or {}
    model = ready.get("model")
    if not model:
        return ""
    which = f"{model.get('name')} {model.get('height')}x{model.get('width')} -> {model.get('dim')}-d"
    if fingerprint:
        return (f"Model: {which} (fingerprint {str(model.get('fingerprint'))[:12]}); "
                f"gallery of {ready.get('gallery_size')} items.")
    return f"Model: {which}, gallery of {ready.get('gallery_size')} items."


def docs_block(data: dict[str, Any], link: str = "../benchmarks/results/http.md") -> str:
    """The HTTP table and paragraph of the benchmarks page, from a results file (``{"machine": ..., "results": ...}``).

    Args:
        data: the results file's content.
        link: where the full report is, relative to the page.
    """
    machine, results = data["machine"], data["results"]
    pinning = results.get("pinning")
    off = offline_images_per_s(results)
    model = _model_sentence(results)
    lines = [DOCS_START, "",
             f"**HTTP load** ([{Path(link).name}]({link}); {_machine.machine_line(machine)}; "
             f"`{_machine.shown_command(machine['command'])}`): `POST /search`, {results['requests_per_level']} "
             "requests per level, median of "
             f"{results.get('repeats', 1)} runs, " + (
                 f"client on core {pinning['client_cores']} and server on core {pinning['server_cores']}"
                 if pinning else "client and server unpinned") +
             f"; load generator {', '.join(results.get('clients', ['httpx']))} ({results.get('body', 'multipart')} "
             "bodies). Server CPU is the OS's account of the server process per request; the model's part is the "
             "model thread's CPU during its calls." + (f" {model}" if model else "") + (
                 f" `before …` rows: the same servers from {results['before']['label']}, in the same run."
                 if results.get("before") else ""), "",
             ("| server | concurrency | req/s | p50 / p99 ms | mean micro-batch | server CPU ms/req | model | outside "
             "the model |"), "|---|---|---|---|---|---|---|---|"]
    for r in results.get("summary", []):
        lines.append(f"| {r['mode']} | {r['concurrency']} | {_fmt(r['requests_per_s'])} | {_fmt(r['p50_ms'])} / "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['mean_batch'])} | {_fmt(r['server_cpu_ms'])} | "
                     f"{_fmt(r['model_cpu_ms'])} | {_fmt(r['outside_model_cpu_ms'])} |")
    if off is not None:
        o = results["offline"][-1]
        lines += ["", (f"Offline batched embedding in the same run (batch {o['batch']}, cores {o.get('cores', 'all')}, "
                      f"{o.get('threads') or '?'} thread(s)): {off:.0f} images/s, the ceiling for micro-batched "
                      "serving on those cores.")]
    checks = results.get("issue_checks") or []
    if checks:
        lines += ["", "Aims: " + "; ".join(
            f"{c['check']}: {_fmt(c['value'])} ({c['aim']}, {'met' if c['met'] else '**not met**'})"
            for c in checks) + "."]
    lines += ["", DOCS_END]
    return "\n".join(lines)


def update_docs(results_path: Path, page: Path) -> None:
    """Replace the generated block of ``page`` (between :data:`DOCS_START` and :data:`DOCS_END`) with
    :func:`docs_block` of ``results_path``; the rest of the page is kept byte for byte.

    Raises:
        UserError: the page or the results file cannot be read, the results are not a ``benchmarks.http``
            results file, or the page has no such block.
    """
    try:
        text = page.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {page}: {exc.strerror or exc}") from exc
    if DOCS_START not in text or DOCS_END not in text:
        raise UserError(f"{page} has no generated HTTP block (the lines {DOCS_START!r} ... {DOCS_END!r})")
    try:
        data = json.loads(results_path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {results_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise UserError(f"{results_path} is not JSON: {exc}") from exc
    link = os.path.relpath(_machine.RESULTS_DIR / f"{results_path.stem}.md", page.resolve().parent)
    try:
        block = docs_block(data, Path(link).as_posix())
    except (KeyError, TypeError, IndexError) as exc:
        raise UserError(f"{results_path} is not a benchmarks.http results file (missing {exc})") from exc
    head, rest = text.split(DOCS_START, 1)
    _, tail = rest.split(DOCS_END, 1)
    page.write_text(head + block + tail)
