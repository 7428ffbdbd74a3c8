"""Smoke runs of the HTTP and end-to-end benchmarks: a few requests against real servers on loopback.

They check that each script runs end to end and writes its JSON / Markdown / PNG with the fields the
README quotes, that every request succeeded, and the counts that follow from the setup (one model call per
request without batching or at concurrency 1). Timings are not asserted: speed is measured, not tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _http_load, _http_rows, end_to_end, http
from benchmarks._server import parse_metrics
from xmreid.errors import UserError

METRICS_TEXT = """# HELP xmreid_model_calls_total Model (embedder) calls
# TYPE xmreid_model_calls_total counter
xmreid_model_calls_total 7.0
xmreid_http_requests_total{endpoint="/search",method="POST",status="200"} 12.0
xmreid_model_batch_size_sum 12.0
xmreid_model_call_duration_seconds_sum 0.35
bogus line without a value
"""


def test_parse_metrics_reads_counters_with_and_without_labels() -> None:
    samples = parse_metrics(METRICS_TEXT)
    assert samples["xmreid_model_calls_total"] == 7.0
    assert samples[_http_load.SEARCH_OK] == 12.0
    assert "bogus" not in " ".join(samples)


def test_level_row_turns_metric_deltas_into_per_request_numbers() -> None:
    level = _http_load.LevelResult(concurrency=4, planned=10, latencies_s=[0.01, 0.02, 0.03, 0.04],
                             timings_ms=[{"decode": 1.0, "embed": 3.0, "search": 2.0, "total": 6.0}] * 4,
                             elapsed_s=0.5)
    level.errors["503"] = 1
    before = parse_metrics(METRICS_TEXT)
    after = {**before, "xmreid_model_calls_total": 9.0, _http_load.SEARCH_OK: 16.0, "xmreid_model_batch_size_sum": 16.0,
             "xmreid_model_call_duration_seconds_sum": 0.39}
    row = _http_rows.level_row("batching", level, before, after)
    assert (row["ok"], row["errors"], row["requests_per_s"]) == (4, 1, 8.0)
    assert row["model_calls"] == 2.0 and row["model_calls_per_request"] == 0.5  # 2 calls for 4 answered searches
    assert row["mean_batch"] == 2.0  # 4 images in 2 calls
    assert row["model_call_ms"] == pytest.approx(20.0)  # 0.04 s over 2 calls
    assert row["server_total_ms"] == 6.0 and row["p50_ms"] == pytest.approx(30.0)


def test_load_queries_takes_only_infrared_crops(sysu_root: Path, tmp_path: Path) -> None:
    queries = http.load_queries(sysu_root, limit=10)
    assert 0 < len(queries) <= 10
    assert all(q.name.split("/")[0] in {"cam3", "cam6"} for q in queries)
    assert all(q.data[:2] == b"\xff\xd8" and q.content_type == "image/jpeg" for q in queries)  # JPEG bytes
    with pytest.raises(UserError, match="cam3 and cam6"):
        http.load_queries(tmp_path)


def test_unknown_variant_is_refused_with_the_valid_names() -> None:
    with pytest.raises(SystemExit):
        end_to_end.parse_args(["--model", "m.onnx", "--gallery", "g", "--images", "i", "--variants", "bogus"])


def _results(out: Path, name: str) -> dict:
    for suffix in ("json", "md", "png"):
        assert (out / f"{name}.{suffix}").is_file(), f"{name}.{suffix} was not written"
    data = json.loads((out / f"{name}.json").read_text())
    machine = data["machine"]
    assert machine["command"].startswith("python -m benchmarks.") or machine["command"].startswith("python ")
    assert {"cpu", "cores", "libraries", "date"} <= set(machine)
    return data["results"]


@pytest.mark.slow
def test_http_benchmark_runs_both_modes_without_errors(tiny_onnx: Path, tiny_gallery: Path, sysu_root: Path,
                                                        tmp_path: Path) -> None:
    rc = http.main(["--model", str(tiny_onnx), "--gallery", str(tiny_gallery), "--images", str(sysu_root),
                    "--concurrency", "1,4", "--requests", "8", "--warmup", "2", "--offline-images", "8",
                    "--offline-rounds", "1", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    results = _results(tmp_path, "http")
    rows = {(r["mode"], r["concurrency"]): r for r in results["rows"]}
    assert set(rows) == {(m, c) for m in ("batching", "no-batching") for c in (1, 4)}
    for row in rows.values():
        assert row["errors"] == 0 and row["ok"] == 8, row["error_kinds"]
        assert row["p50_ms"] > 0 and row["requests_per_s"] > 0
        assert row["server_embed_ms"] is not None
    for c in (1, 4):  # --max-batch-size 1: every request is its own model call
        assert rows[("no-batching", c)]["model_calls_per_request"] == 1.0
        assert rows[("no-batching", c)]["mean_batch"] == 1.0
    assert 0 < rows[("batching", 4)]["model_calls_per_request"] <= 1.0
    assert len(results["offline"]) == 2 and all(o["images_per_s"] > 0 for o in results["offline"])
    assert results["check"]["ratio"] > 0
    text = (tmp_path / "http.md").read_text()
    assert "no-batching" in text and "Offline reference" in text and "## Machine" in text


def test_http_benchmark_posts_batches_and_compares_clients(tiny_onnx: Path, tiny_gallery: Path, sysu_root: Path,
                                                           tmp_path: Path) -> None:
    """--images-per-request posts /search/batch and counts crops; --client httpx is still measurable."""
    rc = http.main(["--model", str(tiny_onnx), "--gallery", str(tiny_gallery), "--images", str(sysu_root),
                    "--concurrency", "2", "--requests", "6", "--warmup", "2", "--offline-images", "8",
                    "--offline-rounds", "1", "--images-per-request", "3", "--profile-requests", "0",
                    "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    rows = _results(tmp_path, "http")["rows"]
    batching = next(r for r in rows if r["mode"] == "batching")
    assert batching["errors"] == 0 and batching["ok"] == 6, batching["error_kinds"]
    assert batching["images_per_s"] == pytest.approx(3 * batching["requests_per_s"])
    assert batching["server_cpu_ms"] is not None  # the /search/batch counter moved (not /search's)
    assert "POST /search/batch` with 3 crops per request" in (tmp_path / "http.md").read_text()
    rc = http.main(["--model", str(tiny_onnx), "--gallery", str(tiny_gallery), "--images", str(sysu_root),
                    "--concurrency", "2", "--requests", "4", "--warmup", "0", "--offline-images", "8",
                    "--offline-rounds", "1", "--client", "aiohttp,httpx", "--body", "raw", "--profile-requests", "0",
                    "--out", str(tmp_path), "--name", "clients", "--no-progress"])
    assert rc == 0
    modes = {(r["mode"], r["client"]) for r in _results(tmp_path, "clients")["rows"]}
    assert modes == {("batching", "aiohttp"), ("batching [httpx]", "httpx"), ("no-batching", "aiohttp"),
                     ("no-batching [httpx]", "httpx")}
    assert all(r["errors"] == 0 and r["client_cpu_ms"] > 0 for r in _results(tmp_path, "clients")["rows"])


def test_load_generator_benchmark_measures_each_client_against_a_canned_server(sysu_root: Path,
                                                                               tmp_path: Path) -> None:
    from benchmarks import load_generator

    rc = load_generator.main(["--images", str(sysu_root), "--concurrency", "4", "--requests", "40",
                              "--repeats", "1", "--out", str(tmp_path)])
    assert rc == 0
    results = _results(tmp_path, "load_generator")
    assert {r["client"] for r in results["summary"]} == {"aiohttp", "httpx"}
    for row in results["rows"]:
        assert row["ok"] == 40 and row["errors"] == 0 and row["client_cpu_ms"] > 0 and row["requests_per_s"] > 0


def test_gc_pause_benchmark_times_full_collections_in_both_states(tiny_onnx: Path, tiny_gallery: Path,
                                                                  tmp_path: Path) -> None:
    import gc

    from benchmarks import gc_pause

    rc = gc_pause.main(["--model", str(tiny_onnx), "--gallery", str(tiny_gallery), "--rounds", "2",
                        "--garbage", "100", "--out", str(tmp_path)])
    assert rc == 0 and gc.get_freeze_count() == 0  # the test process's collector is given back
    loaded, frozen = _results(tmp_path, "gc_pause")["rows"]
    assert loaded["median_ms"] > 0 and frozen["median_ms"] > 0 and frozen["frozen_objects"] > 0
    assert frozen["tracked_objects"] < loaded["tracked_objects"]  # frozen objects are not walked


@pytest.mark.slow
def test_end_to_end_benchmark_splits_latency_and_profiles(tiny_onnx: Path, tiny_gallery: Path, sysu_root: Path,
                                                          tmp_path: Path) -> None:
    rc = end_to_end.main(["--model", str(tiny_onnx), "--gallery", str(tiny_gallery), "--images", str(sysu_root),
                          "--requests", "6", "--block", "3", "--warmup", "1",
                          "--variants", ",".join(end_to_end.VARIANTS), "--profile", "--profile-requests", "3",
                          "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    results = _results(tmp_path, "end_to_end")
    assert results["bare"]["model"]["n"] == 6 and results["bare"]["model"]["p50_ms"] > 0
    assert set(results["variants"]) == set(end_to_end.VARIANTS)  # every variant it offers runs
    for name in end_to_end.VARIANTS:  # "default" runs through the profiling launcher
        v = results["variants"][name]
        assert v["requests"] == 6 and v["errors"] == 0
        assert v["model_calls"] == 6  # concurrency 1: one model call per request
        # The stages partition the mean client wall time (up to the server's rounding of timings_ms to 1 us).
        assert sum(v["ms"].values()) == pytest.approx(v["wall_mean_ms"], abs=0.01)
        assert v["ms"]["model"] > 0 and isinstance(v["target_met"], bool)
    profile = results["profile"]
    assert profile["requests"] == 3 and profile["by_package"] and profile["functions"]
    text = (tmp_path / "end_to_end.md").read_text()
    for name, v in results["variants"].items():  # the report states this run's figures, and only those
        stage = v["largest_stage"]
        assert v["ms"][stage] == max(v["ms"].values())
        assert f"`{name}`: the largest stage is `{stage}`, {v['ms'][stage]:.2f} ms" in text
    assert "proposed fix" not in text


def test_trivial_matchers_and_oracle_on_the_fixture(sysu_root, tmp_path, monkeypatch):
    """The difficulty report runs on the gap splits and the SYSU protocol; the attribute oracle is perfect
    (the invariant cues identify every person) while raw pixels stay near chance across modalities."""
    from benchmarks import _machine, trivial_matcher

    monkeypatch.setattr(_machine, "RESULTS_DIR", tmp_path)
    assert trivial_matcher.main(["--data-root", str(sysu_root), "--out", "tm"]) == 0
    report = json.loads((tmp_path / "tm.json").read_text())["results"]["reports"][0]
    res = report["results"]
    assert set(res) == {"raw_pixels", "grey_histogram", "hog", "oracle", "oracle_shape", "oracle_pattern"}
    assert res["oracle"]["gap"]["test_ir_to_rgb"]["r1"] == 1.0 and res["oracle"]["protocol"]["r1"] == 1.0
    for name in ("raw_pixels", "grey_histogram"):
        assert 0.0 <= res[name]["gap"]["test_ir_to_rgb"]["r1"] <= 1.0
    md = (tmp_path / "tm.md").read_text()
    assert "Contract (raw pixels and grey histogram" in md and "| oracle |" in md


def test_track_queries_benchmark_measures_every_config_and_matches_the_server(tiny_onnx: Path, sysu_root: Path,
                                                                             tmp_path: Path) -> None:
    from benchmarks import track_queries

    rc = track_queries.main(["--model", str(tiny_onnx), "--data-root", str(sysu_root), "--lengths", "1,3",
                             "--draws", "2", "--requests", "2", "--rerank-n", "20", "--out", str(tmp_path)])
    assert rc == 0
    results = _results(tmp_path, "track_queries")
    names = [c["name"] for c in results["configs"]]
    assert names == ["single crop", "single crop + rerank", "track of 3 (mean)", "track of 3 (mean) + rerank",
                     "track of 3 (max)", "track of 3 (max) + rerank"]
    for name in names:
        acc, lat = results["accuracy"][name], results["latency"][name]
        assert len(acc["draws"]) == 2 and 0 <= acc["r1_mean"] <= 1 and 0 < acc["map_mean"] <= 1
        assert acc["queries_per_draw"] == 2 * 3  # one per test identity (3) and IR camera (2)
        assert lat["client"]["n"] == 2 and lat["client"]["p50_ms"] > 0
        assert lat["endpoint"] == ("/search" if name.startswith("single") else "/search/track")
        assert (lat["server_rerank"] is not None) == name.endswith("rerank")
        assert lat["top10_equals_offline"] == "2/2", name  # the server ranks as the offline computation does
    text = (tmp_path / "track_queries.md").read_text()
    assert "track of 3 (mean) + rerank" in text and "## Machine" in text and "Command:" in text
