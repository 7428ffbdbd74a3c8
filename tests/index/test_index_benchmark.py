"""The search benchmark runs end to end at toy size, and the shared benchmark helpers compute right.

(The benchmark's numbers are measured by running it, never asserted here; these tests check that
it runs, writes its three files, and that its exact rows agree with its numpy reference.)
"""

from __future__ import annotations

import json

import pytest

from benchmarks import _machine
from benchmarks import search as search_bench


def test_search_benchmark_tiny_run(tmp_path) -> None:
    rc = search_bench.main(["--size", "600", "--approx-sizes", "300,600", "--dim", "32", "--b1-queries", "3",
                            "--b64-batches", "1", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    payload = json.loads((tmp_path / "search.json").read_text())
    results = payload["results"]
    exact = results["exact"]
    names = [r["row"] for r in exact["rows"]]
    assert names[0].startswith("numpy GEMM") and {"Gallery flat", "Gallery flat_fp16"} <= set(names)
    assert sum("filter" in n for n in names) == 3
    for row in exact["rows"]:
        assert row["b1_ms_per_query"] > 0 and row["b64_ms_per_query"] > 0
        if not row["row"].startswith("Gallery flat_fp16"):  # fp16 rounding may swap near-ties
            assert row["agreement_with_reference"] == pytest.approx(1.0), row["row"]
    assert all(c > 0 for c in exact["ceilings"].values())
    assert {t["target"].split()[0] for t in exact["targets"]} >= {"flat", "flat_fp16", "filter"}
    assert [r["batch"] for r in exact["threshold_sweep"]][:2] == [1, 2]
    rows = results["rows"]
    assert {(r["size"], r["kind"]) for r in rows} == {(n, k) for n in (300, 600) for k in search_bench.ORDER}
    for row in rows:
        assert row["b1_ms_p50"] > 0 and row["b64_ms_per_query"] > 0 and 0 <= row["recall_at_10"] <= 1
    assert payload["machine"]["cpu"] and payload["machine"]["command"].startswith("python")
    md = (tmp_path / "search.md").read_text()
    assert "## Exact search" in md and "### Ceilings" in md and "### README table" in md and "## Machine" in md
    assert "| size | kind | device |" in md
    assert (tmp_path / "search.png").stat().st_size > 1000


def test_search_benchmark_rejects_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        search_bench.main(["--kinds", "flat,annoy"])
    assert info.value.code == 2 and "valid kinds: flat" in capsys.readouterr().err


def test_summarize_and_markdown_table() -> None:
    stats = _machine.summarize([0.004, 0.001, 0.003, 0.002, 0.005])
    assert stats["p50_ms"] == pytest.approx(3.0) and stats["p95_ms"] == pytest.approx(5.0)
    assert stats["mean_ms"] == pytest.approx(3.0) and stats["n"] == 5
    table = _machine.markdown_table([{"a": 1.23456, "b": "x|y"}, {"a": 12345.6}], digits=3)
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | x\\|y |", "| 12346 |  |"]


def test_write_results_files(tmp_path) -> None:
    plt = _machine.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    paths = _machine.write_results("demo", {"x": 1}, "body text", fig, out_dir=tmp_path)
    assert set(paths) == {"json", "md", "png"}
    assert json.loads(paths["json"].read_text())["results"] == {"x": 1}
    text = paths["md"].read_text()
    assert text.startswith("# Benchmark: demo\n\nbody text") and "- Command: `python" in text
