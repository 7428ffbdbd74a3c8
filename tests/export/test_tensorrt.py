"""``python -m export tensorrt``: a clean exit 2 without TensorRT / GPU; build + parity where both exist."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from export import tensorrt_build
from export.__main__ import main as export_cli
from export.artifact import read_metadata
from export.tensorrt_build import build_engine, sidecar_path, tensorrt_unavailable_reason, verify_engine, write_sidecar

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
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # importable, but no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = tensorrt_build.main(["--onnx", str(tiny_onnx), "--out", str(tmp_path / "model.plan")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "no CUDA GPU" in err and "\n" not in err


def _fake_trt(version: str, builder_flags: tuple[str, ...], creation_flags: tuple[str, ...]) -> types.ModuleType:
    """A stand-in exposing only the enums ``precision_plan`` reads (argument handling, not evidence of a build)."""
    import enum

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {name: i for i, name in enumerate(builder_flags)})
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag",
                                                     {name: i for i, name in enumerate(creation_flags)})
    return trt


def test_precision_plan_follows_each_tensorrt_api() -> None:
    from export.tensorrt_build import precision_plan

    # TensorRT 11 (pinned): no FP16 flag, always strongly typed -> an fp16 graph, no creation flag.
    trt11 = _fake_trt("11.4.0.106", ("TF32", "REFIT"), ("STRONGLY_TYPED",))
    assert precision_plan(trt11, fp16=True, tf32=False) == {
        "precision": "fp16", "fp16_graph": True, "network_flags": 0, "builder_flags_set": [],
        "builder_flags_clear": []}
    assert precision_plan(trt11, fp16=False, tf32=False)["builder_flags_clear"] == ["TF32"]
    assert precision_plan(trt11, fp16=False, tf32=True)["builder_flags_clear"] == []
    # TensorRT 10.12+: strong typing is opt-in through the creation flag.
    trt10 = _fake_trt("10.13.3.9", ("FP16", "TF32"), ("EXPLICIT_BATCH", "STRONGLY_TYPED"))
    plan = precision_plan(trt10, fp16=True, tf32=False)
    assert plan["fp16_graph"] and plan["network_flags"] == 1 << 1 and plan["builder_flags_set"] == []
    # An old 10.x without STRONGLY_TYPED: the weak-typing FP16 flag on the fp32 graph.
    old = _fake_trt("10.0.1", ("FP16", "TF32"), ("EXPLICIT_BATCH",))
    plan = precision_plan(old, fp16=True, tf32=False)
    assert not plan["fp16_graph"] and plan["builder_flags_set"] == ["FP16"]


def test_fp16_graph_matches_fp32_on_onnxruntime(tiny_onnx: Path, sysu_root: Path) -> None:
    """The converted graph the fp16 engine is built from, run by ONNX Runtime on this CPU: real numbers."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from export.fp16 import to_fp16
    from export.parity import compare, random_images

    proto = to_fp16(tiny_onnx)
    inputs, outputs = proto.graph.input, proto.graph.output
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert outputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer) > 0.8 * len(
        proto.graph.initializer)
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in onnx.load(str(tiny_onnx)).metadata_props}
    meta = read_metadata(tiny_onnx)
    images = random_images(8, meta["height"], meta["width"], seed=0)
    ref = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"images": images})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert compare(ref, got)["min_cosine"] >= tensorrt_build.FP16_MIN_COSINE


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

    from export.tensorrt_runtime import TensorRTRunner
    from xmreid.errors import UserError

    plan = build_engine(tiny_onnx, tmp_path / "model.plan", min_batch=1, opt_batch=2, max_batch=2)
    runner = TensorRTRunner(plan)
    assert (runner.min_batch, runner.opt_batch, runner.max_batch) == (1, 2, 2)
    with pytest.raises(UserError, match="outside the engine's profile"):
        runner(np.zeros((3, 3, runner.height, runner.width), dtype=np.uint8))


def test_precision_plan_int8_is_explicit_quantization() -> None:
    """Stand-ins for argument handling only: no INT8 engine has been built here (no GPU, no TensorRT)."""
    from export.tensorrt_build import precision_plan
    from xmreid.errors import UserError

    trt11 = _fake_trt("11.4.0.106", ("TF32", "REFIT"), ("STRONGLY_TYPED",))  # no INT8 flag, no calibrators
    assert precision_plan(trt11, fp16=False, tf32=False, int8=True) == {
        "precision": "int8", "fp16_graph": False, "network_flags": 0, "builder_flags_set": [],
        "builder_flags_clear": ["TF32"]}
    trt10 = _fake_trt("10.13.3.9", ("FP16", "INT8", "TF32"), ("EXPLICIT_BATCH", "STRONGLY_TYPED"))
    plan = precision_plan(trt10, fp16=False, tf32=False, int8=True)
    assert plan["network_flags"] == 1 << 1 and plan["builder_flags_set"] == [] and not plan["fp16_graph"]
    old = _fake_trt("10.0.1", ("FP16", "INT8", "TF32"), ("EXPLICIT_BATCH",))
    assert precision_plan(old, fp16=False, tf32=False, int8=True)["builder_flags_set"] == ["INT8"]
    with pytest.raises(UserError, match="exclusive"):
        precision_plan(trt11, fp16=True, tf32=False, int8=True)


def test_int8_build_refuses_models_tensorrt_cannot_take(tiny_onnx: Path, tiny_int8: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before TensorRT is looked for, so this runs here; the build itself has not run without a GPU."""
    for model, expected in ((tiny_onnx, "has no QuantizeLinear/DequantizeLinear nodes"),
                            (tiny_int8, "quantized asymmetrically")):
        rc = export_cli(["tensorrt", "--int8", "--onnx", str(model), "--out", str(tmp_path / "m.plan")])
        err = capsys.readouterr().err
        assert rc == 1 and expected in err and "--target tensorrt" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        export_cli(["tensorrt", "--int8", "--fp16", "--onnx", str(tiny_int8), "--out", str(tmp_path / "m.plan")])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_cli(["tensorrt", "--reference", str(tiny_onnx), "--onnx", str(tiny_onnx), "--out", str(tmp_path / "m")])
    assert "--reference is for --int8" in capsys.readouterr().err


@pytest.mark.tensorrt
@pytest.mark.slow
@needs_tensorrt
def test_int8_engine_from_the_qdq_model(tiny_onnx: Path, sysu_root: Path, tmp_path: Path) -> None:
    from export.quantize import quantize_onnx

    qdq = quantize_onnx(tiny_onnx, sysu_root, tmp_path / "model.int8.onnx", num_images=32, target="tensorrt")
    plan = build_engine(qdq, tmp_path / "model.int8.plan", int8=True, min_batch=1, opt_batch=8, max_batch=16)
    report = verify_engine(plan, qdq, fp16=False, int8=True, data_root=sysu_root, reference_onnx=tiny_onnx)
    assert report["precision"] == "int8" and report["passed"], report
    assert abs(report["retrieval"]["rank1_change"]) <= 0.05, report["retrieval"]
    import json

    assert json.loads(sidecar_path(plan).read_text())["precision"] == "int8"


def test_gpu_check_int8_plumbing_runs_with_a_stand_in_engine(tmp_path: Path) -> None:
    """benchmarks.gpu_check's INT8 step end to end on the CPU, with ONNX Runtime standing in for the engine.

    Proves only that the step's own code (calibration tree, quantize --target tensorrt, rows) runs, so a
    GPU machine's time is not lost to a typo; it says nothing about TensorRT.
    """
    import onnxruntime as ort

    from benchmarks import gpu_check

    ctx = gpu_check.Context(tmp_path, True, device="cpu", arch="resnet18", height=96, width=32)
    built = {}

    def fake_build(onnx_path, out, **kwargs):
        built.update(kwargs, onnx=onnx_path)
        return onnx_path

    def fake_runner(plan):
        session = ort.InferenceSession(str(plan), providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"images": images})[0]

    details, ok = gpu_check._tensorrt_int8(ctx, fake_build, fake_runner)
    assert built["int8"] is True and read_metadata(built["onnx"])["precision"] == "int8"
    assert ok and [r["batch"] for r in details["rows"]] == list(gpu_check.BATCHES)
    assert all(r["min_cosine"] > 0.9999 and -1.0 <= r["min_cosine_vs_fp32"] <= 1.0 for r in details["rows"])
