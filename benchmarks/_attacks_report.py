"""The Markdown report of ``benchmarks.attacks``: one row per attack and measure, before and after, and the target.

Each row says what was counted, the two servers' values side by side, the issue's target, and whether the
after server met it (``met``: yes / no / blank where the row is context, not a target).
"""

from __future__ import annotations

from typing import Any

from benchmarks._machine import format_number


def _get(data: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _statuses(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} × {v}" for k, v in value.items()) or "none"
    return format_number(value)


def _yes(flag: bool | None) -> str:
    return "" if flag is None else ("yes" if flag else "**no**")


def rows(results: dict[str, Any]) -> list[tuple[str, str, Any, Any, str]]:
    """``(attack, measure, before, after, met)`` for every measured value."""
    attacks, out = results["attacks"], []

    def add(attack: str, measure: str, path: tuple[str, ...], met: bool | None = None,
            fmt: Any = format_number) -> None:
        data = attacks.get(attack)
        if data is None:
            return
        out.append((attack, measure, fmt(_get(data.get("before"), *path)), fmt(_get(data.get("after"), *path)),
                    _yes(met)))

    reads = attacks.get("open_reads", {})
    keyed = _get(reads, "after", "with_keys_file")
    add("open_reads", "60 searches, no key, default settings: statuses", ("default", "statuses"), fmt=_statuses)
    add("open_reads", "… distinct gallery ids returned", ("default", "distinct_ids"))
    if keyed is not None:
        met = set(keyed["statuses"]) == {"401"} and keyed["distinct_ids"] == 0
        out.append(("open_reads", "60 searches, no key, with --api-keys-file: statuses / ids", "",
                    f"{_statuses(keyed['statuses'])} / {keyed['distinct_ids']}", _yes(met)))
    host = _get(attacks, "host_rebind", "after", "status")
    add("host_rebind", "Host rebind.attacker.example on /gallery/stats: status", ("status",),
        None if host is None else host == 400)
    declared = _get(attacks, "gallery_without_key", "after", "declared_body")
    add("gallery_without_key", "POST /gallery, 10 MB declared, 64 KB sent: status within 5 s",
        ("declared_body", "status"), None if declared is None else declared["status"] == 403)
    add("gallery_without_key", "… answered before the body was read", ("declared_body", "answered_before_body"))
    add("gallery_without_key", "… seconds to the answer (or the 5 s wait)", ("declared_body", "seconds"))
    full = _get(attacks, "gallery_without_key", "after", "full_body")
    add("gallery_without_key", "POST /gallery, complete 64 KB body with a crop: status", ("full_body", "status"))
    add("gallery_without_key", "… items added", ("full_body", "items_added"),
        None if full is None else full["items_added"] == 0)
    add("gallery_without_key", "… seconds", ("full_body", "seconds"))
    race = attacks.get("thumbnail_race", {}).get("after")
    add("thumbnail_race", "requests / folder swaps meanwhile", (), fmt=lambda d: "" if not d else
        f"{d.get('requests')} / {d.get('swaps')}")
    add("thumbnail_race", "200 with the file from OUTSIDE the image root", ("served_outside",),
        None if not race else race.get("served_outside") == 0)
    add("thumbnail_race", "200 with the real crop", ("served_inside",))
    add("thumbnail_race", "404", ("status_404",))
    add("thumbnail_race", "500", ("status_500",), None if not race else race.get("status_500") == 0)
    add("thumbnail_race", "other statuses", ("other_statuses",), fmt=_statuses)
    seg = attacks.get("one_byte_segments", {}).get("after")
    add("one_byte_segments", "bytes sent (4 connections) / seconds", (), fmt=lambda d: "" if not d else
        f"{d['bytes_sent']} / {d['seconds']}")
    add("one_byte_segments", "answers", ("statuses",), fmt=_statuses)
    seg_met = None if not seg else seg["peak_hwm_growth_mib"] <= seg["bytes_sent"] / 2**20 + 16
    add("one_byte_segments", "peak VmHWM growth, MiB", ("peak_hwm_growth_mib",), seg_met)
    add("one_byte_segments", "peak VmRSS growth, MiB", ("peak_rss_growth_mib",))
    add("one_byte_segments", "VmRSS growth 5 s after close, MiB", ("rss_growth_after_close_mib",))
    add("one_byte_segments", "server bytes per byte sent (peak RSS)", ("server_bytes_per_byte_sent",))
    bomb = attacks.get("bomb_stall", {}).get("after")
    add("bomb_stall", "bomb body bytes / answers", (), fmt=lambda d: "" if not d else
        f"{d['bomb_bytes']} / " + ", ".join(str(b["status"]) for b in d["bombs"]))
    add("bomb_stall", "/search alone p50 / p99 / max, ms", ("search_alone",), fmt=_p50_p99_max)
    add("bomb_stall", "/search during the bombs p50 / p99 / max, ms", ("search_during_bombs",), fmt=_p50_p99_max)
    add("bomb_stall", "added delay (max during − p50 alone), ms", ("added_delay_ms",),
        None if not bomb or bomb["added_delay_ms"] is None else bomb["added_delay_ms"] < 200)
    for n, data in (_get(attacks, "maximal_uploads", "after") or {}).items():
        budget_met = data["peak_hwm_growth_mib"] <= 512 + 16 and data["peak_temp_mib"] <= 512
        add("maximal_uploads", f"{n} at once: answers", (n, "statuses"), fmt=_statuses)
        add("maximal_uploads", f"{n} at once: peak VmHWM growth, MiB", (n, "peak_hwm_growth_mib"), budget_met)
        add("maximal_uploads", f"{n} at once: peak temporary files, MiB", (n, "peak_temp_mib"))
        add("maximal_uploads", f"{n} at once: seconds", (n, "seconds"))
    one = _get(attacks, "header_flood", "after", "one")
    add("header_flood", "1 connection: bytes sent before the server answered or closed", ("one", "bytes_sent"),
        None if not one else one["status"] == 431)
    add("header_flood", "… status / seconds", ("one",), fmt=lambda d: "" if not d else
        f"{d['status']} / {d['seconds']}")
    add("header_flood", "4 flooding processes: bytes pushed / connections", ("four",), fmt=lambda d: "" if not d else
        f"{d['flood_bytes']} / {d['flood_connections']}")
    add("header_flood", "/healthz idle p50 / p99 / max, ms", ("four", "healthz_idle"), fmt=_p50_p99_max)
    add("header_flood", "/healthz during the flood p50 / p99 / max, ms", ("four", "healthz_during_flood"),
        fmt=_p50_p99_max)
    drip = attacks.get("drip_feed", {}).get("after")
    add("drip_feed", "status / seconds until the server ended it (cap)", (), fmt=lambda d: "" if not d else
        f"{d['status'] if d['ended_by_server'] else 'not ended'} / {d['seconds']} ({d['cap_s']:g})",
        met=None if not drip else bool(drip["ended_by_server"] and drip["status"] == 408))
    return out


def _p50_p99_max(d: Any) -> str:
    if not d or not d.get("n"):
        return ""
    return f"{d['p50_ms']:.0f} / {d['p99_ms']:.0f} / {d['max_ms']:.0f} (n={d['n']})"


def report(results: dict[str, Any]) -> str:
    """The Markdown body: setup, the side-by-side table, what the after server did not meet, the targets."""
    intro = ("Hostile uploads and open reads against the real server, the same client code against both: "
             f"**before** (commit {results.get('before_commit') or '—'}) and **after** (commit "
             f"{results.get('after_commit')}), each with default settings, the model `{results['model']}` and a "
             f"{results.get('gallery_items')}-item gallery copy, one server at a time (a fresh one for each memory "
             "attack), each with its own TMPDIR.")
    shared = ("Timings are from a shared 2-core machine running other jobs; the counts and bytes are the findings. "
              "`met` is the after server against the target (blank: context).")
    table = rows(results)
    lines = [intro, ""]
    if results.get("model_note"):
        lines += [results["model_note"], ""]
    lines += [shared, "", "| attack | measure | before | after | met |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {m} | {b} | {c} | {ok} |".replace("\n", " ") for a, m, b, c, ok in table]
    missed = [f"- {a}: {m}: {c}" for a, m, _, c, ok in table if ok == "**no**"]
    lines += ["", "Not met by the after server:" if missed else "Every target was met.", "", *missed]
    lines += ["", "Targets:", ""]
    lines += [f"- **{name}**: {data['target']}" for name, data in results["attacks"].items()]
    rule = ("Rules behind `met`: memory growth counts as within the bytes in flight with 16 MiB of allowance for "
            "the allocator and warm-up; uploads within the 512 MiB default budget (+16 MiB).")
    return "\n".join([*lines, "", rule])
