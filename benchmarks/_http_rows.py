"""The HTTP benchmark's numbers: one table row per load level, medians over the runs, the aims checked.

A row joins what the client measured (:class:`benchmarks._http_load.LevelResult`) with what changed in the
server's ``/metrics`` and in the OS's CPU account of the server process during the level, per answered
request. The aims are the owner's: they are checked and printed, never asserted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks import _machine, _proc
from benchmarks._http_load import MODEL_CPU, LevelResult, answered, endpoint

TARGET_RATIO = 0.90  # micro-batched requests/s over offline batched images/s (owner's target)
OUTSIDE_MODEL_CPU_MS = 1.5  # server CPU per /search outside the model
BATCHED_RATIO = 0.80  # micro-batched throughput at the top level over offline batched, same cores
MIN_MEAN_BATCH = 8.0  # mean micro-batch at the top level


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


SUMMARY_FIELDS = ("requests_per_s", "images_per_s", "p50_ms", "p99_ms", "mean_batch", "model_calls_per_request",
                  "server_cpu_ms", "model_cpu_ms", "outside_model_cpu_ms", "event_loop_cpu_ms", "errors")


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


def target_check(results: dict[str, Any]) -> dict[str, Any] | None:
    """Best micro-batched requests/s over the mean offline images/s, against :data:`TARGET_RATIO`."""
    batched = [r for r in results.get("summary") or results["rows"] if r["mode"] in ("batching", "external")]
    batched = [r for r in batched if r.get("requests_per_s")]
    offline = offline_images_per_s(results)
    if not batched or offline is None:
        return None
    best = max(batched, key=images_per_s)
    ratio = images_per_s(best) / offline
    return {"best_requests_per_s": images_per_s(best), "at_concurrency": best["concurrency"],
            "offline_images_per_s": offline, "ratio": ratio, "target": TARGET_RATIO, "met": ratio >= TARGET_RATIO}


def images_per_s(row: dict[str, Any]) -> float:
    """Crops searched per second (requests/s for /search; older results files have no images_per_s)."""
    value = row.get("images_per_s")
    return float(row["requests_per_s"] if value is None else value)


def offline_images_per_s(results: dict[str, Any]) -> float | None:
    """The offline reference's images/s, the mean of its passes before and after the levels (None: not run)."""
    offline = results["offline"]
    return float(np.mean([o["images_per_s"] for o in offline])) if offline else None


def aim_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The serving aims on the medians of the runs (batching server of this checkout); printed, never asserted.

    Server CPU per request outside the model, p99 with batching against without, micro-batched throughput at
    the highest concurrency over offline batched embedding on the same cores, and the mean micro-batch there.
    """
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
    offline = offline_images_per_s(results)
    if top is not None and offline is not None:
        ratio = images_per_s(top) / offline
        unit = "req/s" if results.get("images_per_request", 1) == 1 else "crops/s"
        checks.append({"check": f"batched {unit} at concurrency {top['concurrency']} over offline batched images/s "
                                f"(same cores)", "value": f"{images_per_s(top):.1f} / {offline:.1f} = {ratio:.0%}",
                       "aim": f">= {BATCHED_RATIO:.0%}", "met": ratio >= BATCHED_RATIO})
        if top.get("mean_batch") is not None:
            checks.append({"check": f"mean micro-batch at concurrency {top['concurrency']}", "value": top["mean_batch"],
                           "aim": f">= {MIN_MEAN_BATCH:g}", "met": top["mean_batch"] >= MIN_MEAN_BATCH})
    return checks
