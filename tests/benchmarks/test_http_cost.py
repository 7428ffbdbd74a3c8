"""The HTTP benchmark's cost accounting: OS CPU readings, core split, per-request CPU, medians and aims.

No timing is asserted: only that the numbers are read, combined and compared the way the report says.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from benchmarks import _http_load, _http_report, _http_rows, _machine, _proc, http
from benchmarks._server import ServerProcess


def test_cpu_times_reads_this_process_and_its_main_thread() -> None:
    before = _proc.cpu_times(os.getpid())
    assert before is not None and before.total >= 0
    sum(i * i for i in range(2_000_000))  # some CPU work
    after = _proc.cpu_times(os.getpid())
    spent = after - before
    assert spent.total >= 0 and (spent.main_thread is None or spent.main_thread >= 0)
    assert _proc.cpu_times(2**22 + 12345) is None  # above Linux's largest pid: absent, and no exception


def test_split_cores_gives_the_client_one_core_and_the_server_the_rest() -> None:
    assert _proc.split_cores([0]) is None
    assert _proc.split_cores([3, 1]) == ({1}, {3})
    assert _proc.split_cores([0, 1, 2, 3]) == ({0}, {1, 2, 3})
    assert _proc.describe({1}) == "1" and _proc.describe({1, 2, 3}) == "1-3" and _proc.describe({0, 2}) == "0,2"
    assert _proc.describe(None) == "all"


def test_pinned_server_command_names_its_cores(tmp_path) -> None:
    server = ServerProcess(tmp_path / "m.onnx", tmp_path, cpus={1}, port=1234)
    assert server.command[:4] == ["taskset", "-c", "1", "python"]
    assert ServerProcess(tmp_path / "m.onnx", tmp_path, port=1234).command[0] == "python"


def _level(ok: int = 4) -> _http_load.LevelResult:
    return _http_load.LevelResult(concurrency=8, planned=ok, latencies_s=[0.01] * ok,
                            timings_ms=[{"decode": 1.0, "embed": 3.0, "search": 2.0, "total": 6.0}] * ok, elapsed_s=1.0)


def test_level_row_splits_server_cpu_at_the_model() -> None:
    before = {_http_load.SEARCH_OK: 10.0, _http_load.MODEL_CPU: 1.0, "xmreid_model_calls_total": 5.0}
    after = {_http_load.SEARCH_OK: 14.0, _http_load.MODEL_CPU: 1.02, "xmreid_model_calls_total": 6.0,
             "xmreid_model_batch_size_sum": 4.0}
    row = _http_rows.level_row("batching", _level(), before, after, _proc.CpuTimes(total=0.03, main_thread=0.006))
    assert row["server_cpu_ms"] == pytest.approx(7.5)  # 30 ms of process CPU over 4 answered searches
    assert row["model_cpu_ms"] == pytest.approx(5.0)  # 20 ms of model-thread CPU over 4
    assert row["outside_model_cpu_ms"] == pytest.approx(2.5)
    assert row["event_loop_cpu_ms"] == pytest.approx(1.5)
    unknown = _http_rows.level_row("external", _level(), before, {**after, _http_load.MODEL_CPU: 1.02})
    assert unknown["server_cpu_ms"] is None and unknown["outside_model_cpu_ms"] is None


def test_level_row_reports_the_load_generators_own_cpu() -> None:
    level = _level()
    level.client_cpu_s = 0.5  # 0.5 s of client CPU over 4 answers in 1 s of wall time
    row = _http_rows.level_row("batching", level, {}, {})
    assert row["client_cpu_ms"] == pytest.approx(125.0) and row["client_busy"] == pytest.approx(0.5)
    assert _http_rows.level_row("batching", _level(), {}, {})["client_cpu_ms"] is None


def test_collector_paused_stops_collections_in_the_block_and_restores_the_collector() -> None:
    import gc

    from benchmarks._server import collector_paused

    collections: list[int] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        with collector_paused():
            assert not gc.isenabled()
            started = len(collections)  # the full collection on entry
            for _ in range(20_000):  # far more container allocations than the generation-0 threshold
                a: list = []
                a.append(a)
            assert len(collections) == started
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(count)
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a collector that was off stays off
    finally:
        gc.enable()


def test_summary_takes_medians_per_mode_and_level_and_checks_the_aims() -> None:
    rows = []
    for run, (rps, outside, p99) in enumerate([(100.0, 1.0, 50.0), (120.0, 2.0, 70.0), (110.0, 1.2, 60.0)]):
        rows.append({"mode": "batching", "concurrency": 32, "run": run, "requests_per_s": rps, "p50_ms": 10.0,
                     "p99_ms": p99, "mean_batch": 9.0, "outside_model_cpu_ms": outside, "errors": 0})
        rows.append({"mode": "no-batching", "concurrency": 32, "run": run, "requests_per_s": 90.0, "p50_ms": 12.0,
                     "p99_ms": 65.0, "mean_batch": 1.0, "outside_model_cpu_ms": 1.4, "errors": 0})
    summary = _http_rows.summarize_runs(rows)
    batching = next(r for r in summary if r["mode"] == "batching")
    assert (batching["runs"], batching["requests_per_s"], batching["outside_model_cpu_ms"]) == (3, 110.0, 1.2)
    assert batching["server_cpu_ms"] is None  # not measured in these rows
    results = {"concurrency": [32], "summary": summary, "offline": [{"images_per_s": 125.0}]}
    checks = {c["check"].split(" at ")[0]: c for c in _http_rows.aim_checks(results)}
    assert checks["server CPU per /search outside the model"]["met"]  # 1.2 <= 1.5
    assert checks["p99 with batching <= without"]["met"]  # 60 <= 65
    assert checks["batched req/s"]["met"]  # 110 / 125 = 88 % >= 80 %
    assert checks["mean micro-batch"]["met"]


def test_docs_block_is_regenerated_between_its_markers(tmp_path, capsys) -> None:
    import json

    from xmreid.errors import UserError

    results = {"requests_per_level": 400, "repeats": 3, "pinning": {"client_cores": "0", "server_cores": "1"},
               "summary": [{"mode": "batching", "concurrency": 32, "requests_per_s": 250.0, "p50_ms": 120.0,
                            "p99_ms": 180.0, "mean_batch": 12.5, "server_cpu_ms": 4.0, "model_cpu_ms": 3.0,
                            "outside_model_cpu_ms": 1.0}],
               "offline": [{"images_per_s": 300.0, "batch": 16, "cores": "1", "threads": 1}],
               "issue_checks": [{"check": "mean micro-batch at concurrency 32", "value": 12.5, "aim": ">= 8",
                                 "met": True}]}
    machine = {"cpu": "AMD EPYC", "cores_usable": 2, "load_average_1_5_15": [0.1, 0.2, 0.3],
               "date": "2026-12-01T15:00:00+00:00", "command": "python -m benchmarks.http --model m"}
    path = tmp_path / "http.json"
    path.write_text(json.dumps({"machine": machine, "results": results}))
    page = tmp_path / "docs" / "benchmarks.md"
    page.parent.mkdir()
    page.write_text(f"intro\n{_http_report.DOCS_START}\nold figures\n{_http_report.DOCS_END}\noutro\n")
    assert http.main(["--readme-from", str(path), "--docs", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old figures" not in text
    assert "| batching | 32 | 250 | 120 / 180 | 12.5 | 4 | 3 | 1 |" in text
    assert "client on core 0 and server on core 1" in text and "2026-12-01" in text
    assert http.main(["--docs-from", str(path), "--docs", str(page)]) == 0  # the alias; idempotent
    assert page.read_text() == text
    page.write_text("no markers")
    with pytest.raises(UserError, match="no generated HTTP block"):
        _http_report.update_docs(path, page)
    capsys.readouterr()
    assert http.main(["--readme-from", str(path), "--docs", str(page)]) == 1  # one clear line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no generated HTTP block" in err and len(err.strip().splitlines()) == 1


def test_docs_block_names_no_machine_folder(tmp_path) -> None:
    """The page quotes the command with the machine's folders cut and links the full report from docs/."""
    import json

    command = ("python -m benchmarks.http --model /scratch/run7/model.onnx --gallery=/scratch/run7/gallery "
               f"--images {_machine.REPO / 'data' / 'synthetic_sysu'}")
    data = {"machine": {"cpu": "AMD EPYC", "cores_usable": 2, "load_average_1_5_15": [0.5, 0.2, 0.3],
                        "date": "2026-12-01T15:00:00+00:00", "command": command},
            "results": {"requests_per_level": 4, "offline": [], "summary": []}}
    block = _http_report.docs_block(data)
    assert "/scratch" not in block and str(_machine.REPO) not in block
    assert ("`python -m benchmarks.http --model model.onnx --gallery=gallery --images data/synthetic_sysu`"
            in block)
    assert "[http.md](../benchmarks/results/http.md)" in block
    page = tmp_path / "benchmarks.md"  # a page elsewhere links the results file named like the JSON
    page.write_text(f"{_http_report.DOCS_START}\n{_http_report.DOCS_END}\n")
    path = tmp_path / "http_run.json"
    path.write_text(json.dumps(data))
    _http_report.update_docs(path, page)
    assert "benchmarks/results/http_run.md)" in page.read_text()


def test_a_batch_level_counts_batch_answers_and_crops() -> None:
    level = _level()
    level.images_per_request = 4
    before = {_http_load.answered(4): 10.0}
    after = {_http_load.answered(4): 14.0, _http_load.SEARCH_OK: 99.0}  # /search's counter is not this level's
    row = _http_rows.level_row("batching", level, before, after, _proc.CpuTimes(total=0.04, main_thread=None))
    assert _http_load.endpoint(4) == "/search/batch" and 'endpoint="/search/batch"' in _http_load.answered(4)
    assert row["images_per_s"] == pytest.approx(16.0) and row["requests_per_s"] == pytest.approx(4.0)
    assert row["server_cpu_ms"] == pytest.approx(10.0)  # 40 ms over the 4 answered batch requests
    with pytest.raises(ValueError, match="images_per_request"):
        asyncio.run(_http_load.run_level("http://127.0.0.1:9", [], 1, 1, 1.0, images_per_request=2, body="raw"))
