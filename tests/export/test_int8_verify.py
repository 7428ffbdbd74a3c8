"""``python -m export verify`` on an INT8 model: cosine and SYSU retrieval against its fp32 parent, with a gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.__main__ import main as export_cli
from export.int8_verify import COMBINATIONS, cosine_stats, verify_int8
from xmreid.errors import UserError


def test_verify_int8_cli_reports_cosine_and_retrieval(tiny_onnx: Path, tiny_int8: Path, sysu_root: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "int8.json"
    rc = export_cli(["verify", "--onnx", str(tiny_int8), "--reference", str(tiny_onnx), "--data-root",
                     str(sysu_root), "--images", str(sysu_root), "--trials", "3", "--provider", "cpu",
                     "--max-map-drop", "100", "--json", str(report_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "cosine per image" in out and "fp32 / int8" in out and "passed: worst INT8 mAP drop" in out
    report = json.loads(report_path.read_text())
    assert set(report["cosine"]) == {"test_split", "test_ir_queries", "test_rgb_pool", "images"}
    stats = report["cosine"]["test_split"]
    assert stats["min"] <= stats["p1"] <= stats["median"] <= 1.0 + 1e-9
    assert stats["n"] == report["queries"] + report["gallery_pool"]
    assert set(report["retrieval"]) == set(COMBINATIONS) and set(report["drops"]) == set(COMBINATIONS) - {"fp32"}
    for row in report["retrieval"].values():
        assert set(row) == {"gallery", "query", "r1", "mAP", "mINP"} and 0.0 <= row["mAP"] <= 1.0
    fp32, int8 = report["retrieval"]["fp32"], report["retrieval"]["int8"]
    assert report["drops"]["int8"]["mAP"] == pytest.approx(100 * (fp32["mAP"] - int8["mAP"]))
    assert report["quantization"]["method"] == "minmax" and report["passed"]


def test_fp32_rows_equal_the_plain_retrieval_check(tiny_onnx: Path, tiny_int8: Path, sysu_root: Path) -> None:
    """The fp32 row is the protocol the fp16/TensorRT check already uses, on the same draws."""
    from export.ort import create_session
    from export.retrieval_check import rank1_change

    session = create_session(tiny_onnx, "cpu")
    plain = rank1_change(lambda x: session.run(None, {"images": x})[0], lambda x: session.run(None, {"images": x})[0],
                         sysu_root, 96, 32, trials=3)
    report = verify_int8(tiny_int8, tiny_onnx, data_root=sysu_root, trials=3, max_map_drop=100)
    assert {k: report["retrieval"]["fp32"][k] for k in ("r1", "mAP", "mINP")} == plain["reference"]


def test_a_loss_above_the_threshold_fails_with_exit_1(tiny_onnx: Path, tiny_int8: Path, sysu_root: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A threshold below any achievable drop: every INT8 row "loses too much", so the gate must trip.
    rc = export_cli(["verify", "--onnx", str(tiny_int8), "--reference", str(tiny_onnx), "--data-root",
                     str(sysu_root), "--trials", "2", "--provider", "cpu", "--max-map-drop", "-1000",
                     "--max-r1-drop", "-1000"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED: int8 loses" in out and "R1 points" in out


def test_the_reference_must_be_the_parent(tiny_int8: Path, tiny_checkpoint: Path, sysu_root: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.models import model_from_checkpoint
    from export.onnx_export import export_model

    other = export_model(model_from_checkpoint(tiny_checkpoint), tmp_path / "other.onnx", exporter="torchscript")
    with pytest.raises(UserError, match="is not the model model.int8.onnx was quantized from"):
        verify_int8(tiny_int8, other, data_root=sysu_root)
    with pytest.raises(UserError, match="is itself INT8"):
        verify_int8(tiny_int8, tiny_int8, data_root=sysu_root)
    with pytest.raises(UserError, match="needs --data-root"):
        verify_int8(tiny_int8, other)
    with pytest.raises(SystemExit) as exc:
        export_cli(["verify", "--onnx", str(tiny_int8), "--data-root", str(sysu_root)])
    assert exc.value.code == 2 and "give --reference" in capsys.readouterr().err


def test_fp32_verify_still_needs_a_pytorch_model(tiny_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        export_cli(["verify", "--onnx", str(tiny_onnx)])
    assert exc.value.code == 2 and "--checkpoint --random is required" in capsys.readouterr().err


def test_cosine_stats() -> None:
    ref = np.eye(4, dtype=np.float32)
    cand = ref.copy()
    cand[0] = [1.0, 1.0, 0.0, 0.0]
    stats = cosine_stats(ref, cand)
    assert stats["n"] == 4 and stats["min"] == pytest.approx(1 / np.sqrt(2)) and stats["median"] == pytest.approx(1.0)
    assert stats["min"] < stats["p1"] < 1.0
