"""``python -m export tensorrt``: a clean exit 2 without TensorRT / GPU; build + parity where both exist."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from export import tensorrt_build
from export.__main__ import main as export_cli
from export.metadata import read_metadata
from export.tensorrt_build import (build_engine, sidecar_path, tensorrt_unavailable_reason, verify_engine,
                                   write_sidecar)

_REASON = tensorrt_unavailable_reason()
needs_tensorrt = pytest.mark.skipif(_REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {_REASON}")


def test_without_tensorrt_exit_2_with_one_sentence(tiny_onnx: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, installed or not
    rc = export_cli(["tensorrt", "--onnx", str(tiny_onnx), "--out", str(tmp_path / "model.plan")])
    captured = capsys.readouterr()
    assert rc == 2
    message = captured.err.strip()
    assert message.startswith("TensorRT is not installed") and message.count(". ") == 0 and message.endswith(".")
    assert "Traceback" not in captured.err and "\n" not in message
    assert not (tmp_path / "model.plan").exists()


def test_without_gpu_exit_2_with_one_sentence(tiny_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # importable, but no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = tensorrt_build.main(["--onnx", str(tiny_onnx), "--out", str(tmp_path / "model.plan")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "no CUDA GPU" in err and "\n" not in err


def test_sidecar_is_what_serving_reads(tiny_onnx: Path, tmp_path: Path) -> None:
    """The engine's JSON sidecar carries the ONNX metadata and fingerprints in serving's format."""
    import hashlib

    from serving.embedders.base import ArtifactMetadata
    from serving.embedders.tensorrt_embedder import SIDECAR_FORMAT, read_sidecar

    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")  # the sidecar only hashes the engine
    path = write_sidecar(plan, tiny_onnx, precision="fp16", min_batch=1, opt_batch=8, max_batch=32,
                         tensorrt_version="10.x")
    assert path == sidecar_path(plan) == tmp_path / "model.plan.json"
    sidecar = read_sidecar(plan)
    assert sidecar["format"] == SIDECAR_FORMAT
    assert sidecar["onnx_sha256"] == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert sidecar["plan_sha256"] == hashlib.sha256(b"engine bytes").hexdigest()
    assert (sidecar["min_batch"], sidecar["opt_batch"], sidecar["max_batch"]) == (1, 8, 32)
    meta = read_metadata(tiny_onnx)
    parsed = ArtifactMetadata.from_strings(sidecar["metadata"], source="sidecar")
    assert (parsed.height, parsed.width, parsed.descriptor_dim) == (meta["height"], meta["width"],
                                                                   meta["descriptor_dim"])
    assert sidecar["metadata"]["config_digest"] == meta["config_digest"]


@pytest.mark.tensorrt
@pytest.mark.slow
@needs_tensorrt
def test_fp32_engine_matches_onnxruntime(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = build_engine(tiny_onnx, tmp_path / "model.plan", min_batch=1, opt_batch=4, max_batch=8, workspace_gb=1)
    assert sidecar_path(plan).is_file()
    report = verify_engine(plan, tiny_onnx, fp16=False)
    assert [r["batch_size"] for r in report["rows"]] == [1, 3, 4, 8]
    assert report["passed"] and report["min_cosine"] >= 0.9999, report


@pytest.mark.tensorrt
@pytest.mark.slow
@needs_tensorrt
def test_fp16_engine_and_rank1_change(tiny_onnx: Path, sysu_root: Path, tmp_path: Path) -> None:
    plan = build_engine(tiny_onnx, tmp_path / "model.plan", fp16=True, min_batch=1, opt_batch=8, max_batch=16)
    report = verify_engine(plan, tiny_onnx, fp16=True, data_root=sysu_root)
    assert report["min_cosine"] >= 0.999, report
    retrieval = report["retrieval"]
    assert 0.0 <= retrieval["candidate"]["r1"] <= 1.0
    assert abs(retrieval["rank1_change"]) <= 0.05, retrieval  # fp16 may swap near-ties, not reorder rankings


@pytest.mark.tensorrt
@needs_tensorrt
def test_engine_rejects_batches_outside_its_profile(tiny_onnx: Path, tmp_path: Path) -> None:
    import numpy as np

    from export.errors import UserError
    from export.tensorrt_runtime import TensorRTRunner

    plan = build_engine(tiny_onnx, tmp_path / "model.plan", min_batch=1, opt_batch=2, max_batch=2)
    runner = TensorRTRunner(plan)
    assert (runner.min_batch, runner.opt_batch, runner.max_batch) == (1, 2, 2)
    with pytest.raises(UserError, match="outside the engine's profile"):
        runner(np.zeros((3, 3, runner.height, runner.width), dtype=np.uint8))
