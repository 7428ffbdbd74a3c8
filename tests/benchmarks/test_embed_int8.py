"""benchmarks.embed's INT8 rows: quantized in the run, timed beside fp32 ONNX Runtime and PyTorch, with accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _embed_profile, _embed_report, embed
from benchmarks._embed_backends import BASELINE, FP32_ORT, INT8_BACKEND


@pytest.mark.slow
def test_quick_run_has_int8_rows_accuracy_and_the_operator_breakdown(tiny_checkpoint: Path, sysu_root: Path,
                                                                     tmp_path: Path) -> None:
    rc = embed.main(["--models", "demo", "--checkpoint", str(tiny_checkpoint), "--quick", "--batch-sizes", "1,2",
                     "--threads", "1", "--budget-s", "0.2", "--rounds", "3", "--calibration-images", str(sysu_root),
                     "--out", str(tmp_path), "--name", "embed", "--no-progress"])
    assert rc == 0
    results = json.loads((tmp_path / "embed.json").read_text())["results"]
    model = results["models"]["demo"]
    rows = {(r["backend"], r["batch"]): r for r in model["rows"]}
    assert set(rows) == {(b, s) for b in (BASELINE, FP32_ORT, INT8_BACKEND) for s in (1, 2)}
    int8, fp32 = rows[(INT8_BACKEND, 2)], rows[(FP32_ORT, 2)]
    assert fp32["cos_min"] == pytest.approx(1.0) and fp32["speedup_vs_onnxruntime_cpu"] == pytest.approx(1.0)
    assert 0.9 < int8["cos_min"] <= int8["cos_p1"] <= int8["cos_median"] < 1.0
    assert int8["speedup_vs_onnxruntime_cpu"] > 0 and int8["accuracy_images"] == embed.ACCURACY_IMAGES
    assert model["info"]["int8_quantization"]["calibration_images"] == 64  # --quick
    ob = model["op_breakdown"]
    assert ob["batch"] == 2 and "QLinearConv" in ob["int8_vs_fp32_ms"] and "onnxruntime-int8" in ob
    assert isinstance(results["int8_gemm"]["u8s8_saturates"], bool)
    md = (tmp_path / "embed.md").read_text()
    assert "INT8 vs fp32 ONNX Runtime, ms per operator type" in md and "| onnxruntime-int8-cpu |" in md


def test_int8_gemm_probe_is_exact_or_saturated() -> None:
    probe = _embed_profile.int8_gemm_saturates()
    assert probe["exact"] == 255 * 127 * 64
    assert probe["got"] == (32767 * 32 if probe["u8s8_saturates"] else probe["exact"])


def test_int8_verdict_against_fp32_onnxruntime() -> None:
    rows = [{"backend": INT8_BACKEND, "threads": 2, "batch": 8, "speedup_vs_onnxruntime_cpu": 1.2,
             "cos_min": 0.99}, {"backend": INT8_BACKEND, "threads": 2, "batch": 1,
                                "speedup_vs_onnxruntime_cpu": 3.0}]
    lines = _embed_report._int8_verdicts({"models": {"paper": {"rows": rows}}})
    assert lines == [("- onnxruntime-int8-cpu on paper, 2 threads, batch 8: 1.20x fp32 ONNX Runtime "
                     "(target 1.5x: not met; cosine vs fp32 min 0.9900)")]


def test_no_int8_flag_and_default_calibration(tmp_path: Path) -> None:
    args = embed.parse_args(["--no-int8", "--quick"])
    assert args.int8 is False and args.calibration_num_images == 64
    args = embed.parse_args(["--calibration-images", str(tmp_path)])
    assert args.int8 is True and embed.calibration_root(args, tmp_path) == tmp_path
