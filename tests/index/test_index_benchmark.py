"""The search benchmark runs end to end at toy size, and the shared benchmark helpers compute right.

(The benchmark's numbers are measured by running it, never asserted here; these tests check that
it runs, writes its three files, and that its exact rows agree with its numpy reference.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import _machine, _search_data
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
    assert {(r["data"], r["size"], r["kind"]) for r in rows} == {("clustered", n, k) for n in (300, 600)
                                                                  for k in search_bench.ORDER}
    for row in rows:
        assert row["b1_ms_p50"] > 0 and row["b64_ms_per_query"] > 0 and 0 <= row["recall_at_10"] <= 1
        assert row["exact_b1_ms"] > 0 and row["speedup_b1"] == pytest.approx(row["exact_b1_ms"] / row["b1_ms_p50"])
    assert payload["machine"]["cpu"] and payload["machine"]["command"].startswith("python")
    md = (tmp_path / "search.md").read_text()
    assert "## Exact search" in md and "### Ceilings" in md and "### README table" in md and "## Machine" in md
    assert "| data | size | kind | device |" in md and "### Approximate targets" in md
    assert (tmp_path / "search.png").stat().st_size > 1000


def test_search_benchmark_rejects_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        search_bench.main(["--kinds", "flat,annoy"])
    assert info.value.code == 2 and "valid kinds: flat" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        search_bench.main(["--data", "uniform"])
    assert info.value.code == 2 and "valid: clustered, gaussian, model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        search_bench.main(["--data", "model"])
    assert info.value.code == 2 and "--data model needs --model" in capsys.readouterr().err


def test_gaussian_and_clustered_data_are_normalised_and_seeded() -> None:
    for make in (_search_data.gaussian, _search_data.clustered):
        x, q = make(1000, 16, 8, seed=1)
        assert x.dtype == np.float32 and x.shape == (1000, 16) and q.shape == (8, 16)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
        np.testing.assert_array_equal(make(1000, 16, 8, seed=1)[0], x)


def test_model_shaped_data_follows_the_fitted_covariances() -> None:
    rng = np.random.default_rng(0)
    d = 8
    between = np.zeros((4, d), dtype=np.float32)
    between[:, :2] = rng.standard_normal((4, 2)) * 3          # identities spread over dims 0-1 only
    within = np.zeros((16, d), dtype=np.float32)
    within[:, 2:] = rng.standard_normal((16, d - 2)) * 0.05   # crops vary in dims 2-7 only, slightly
    mean = np.full(d, 10.0, dtype=np.float32)                  # far from the origin: norms ~ constant
    stats = _search_data.ModelStats(mean=mean, between=between, within=within, crops_per_identity=50.0,
                                    identities=4, images=200, source="hand-made")
    x, _q = _search_data.model_shaped(20_000, 32, seed=0, stats=stats)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    raw, _ = _search_data.model_shaped(20_000, 32, seed=0, stats=stats, normalise=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), x, atol=1e-6)
    np.testing.assert_allclose(raw.mean(axis=0)[2:], mean[2:], atol=0.01)
    spread = np.cov(raw.T)
    expected = between.T @ between + within.T @ within
    np.testing.assert_allclose(spread[:2, :2], expected[:2, :2], rtol=0.25, atol=0.05)  # 400 identities drawn
    np.testing.assert_allclose(spread[2:, 2:], expected[2:, 2:], rtol=0.05, atol=2e-3)  # 20,000 crops
    assert np.abs(spread[:2, 2:]).max() < 0.05                 # identity and crop directions uncorrelated
    # consecutive items of one identity: ~50 per identity, neighbours share their centre
    assert np.mean(np.linalg.norm(np.diff(raw, axis=0), axis=1) < 2.0) > 0.95  # within ~0.7, between ~6
    assert "model-shaped" in stats.describe() and "rank 4" in stats.describe()


def test_fit_model_stats_embeds_rgb_crops(tiny_onnx, sysu_root) -> None:
    stats = _search_data.fit_model_stats(tiny_onnx, sysu_root)
    assert stats.identities == 12 and stats.images == 12 * 4 * 4     # 4 RGB cameras x 4 images
    assert stats.between.shape == (12, len(stats.mean)) and stats.crops_per_identity == 16
    x, _q = _search_data.model_shaped(500, 5, seed=0, stats=stats)
    assert x.shape == (500, len(stats.mean))
    with pytest.raises(ValueError, match="fewer than two identities"):
        _search_data.fit_model_stats(tiny_onnx, sysu_root / "exp")


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
