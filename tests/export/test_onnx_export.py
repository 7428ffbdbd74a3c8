"""ONNX export: graph contract, metadata round-trip, parity with PyTorch, atomic writes, user errors.

Tolerance: fp32 ONNX Runtime folds BatchNorm into the conv weights and reorders reductions, so its
descriptors differ from eager PyTorch by float32 rounding only; cosine >= 0.9999 (ARCHITECTURE.md §8)
leaves two orders of magnitude of headroom over what we observe (~1 - 1e-7) while any wrong weight,
wrong normalisation or wrong part order drops it far below.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main as export_cli
from export.artifact import METADATA_KEYS, config_digest, metadata_from_proto, read_metadata
from export.models import random_model
from export.onnx_export import export_model, export_onnx
from training.model import load_checkpoint
from xmreid import atomic as _io
from xmreid.errors import UserError

MIN_COSINE = 0.9999


def _cpu_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint: Path):
    model, ckpt = load_checkpoint(tiny_checkpoint)
    return model.eval(), ckpt


def test_graph_contract(tiny_onnx: Path, tiny_model) -> None:
    model, _ = tiny_model
    proto = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("descriptors", onnx.TensorProto.FLOAT)
    in_dims, out_dims = inp.type.tensor_type.shape.dim, out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")  # symbolic batch axis
    assert out_dims[0].dim_param == in_dims[0].dim_param
    assert [d.dim_value for d in in_dims[1:]] == [3, model.height, model.width]
    assert [d.dim_value for d in out_dims[1:]] == [model.parts * 256]
    # The classifiers are training-only: no Gemm/MatMul of width num_classes may survive in the graph.
    assert not {n.op_type for n in proto.graph.node} & {"Gemm", "MatMul", "Softmax"}


def test_metadata_round_trip(tiny_onnx: Path, tiny_model) -> None:
    model, ckpt = tiny_model
    meta = read_metadata(tiny_onnx)
    assert set(METADATA_KEYS) <= set(meta)
    assert {k: meta[k] for k in ("height", "width", "parts", "embed_dim", "descriptor_dim", "arch")} == {
        "height": model.height, "width": model.width, "parts": model.parts, "embed_dim": model.embed_dim,
        "descriptor_dim": model.descriptor_dim, "arch": model.arch}
    assert all(isinstance(meta[k], int) for k in ("height", "width", "parts", "embed_dim", "descriptor_dim"))
    assert (meta["channel_order"], meta["layout"], meta["input_dtype"]) == ("RGB", "NCHW", "uint8")
    # Digest recomputed by hand from the checkpoint: canonical JSON (sorted keys, no spaces) -> sha256.
    canonical = json.dumps({"config": ckpt["config"], "model_config": ckpt["model_config"]}, sort_keys=True,
                           separators=(",", ":"), default=str)
    assert meta["config_digest"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert "torch" in meta["exporter_version"] and "opset" in meta["exporter_version"]


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_pytorch(tiny_onnx: Path, tiny_model, batch: int,
                                     record_property: pytest.RecordProperty) -> None:
    model, _ = tiny_model
    images = np.random.default_rng(batch).integers(0, 256, (batch, 3, model.height, model.width), dtype=np.uint8)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    (got,) = _cpu_session(tiny_onnx).run(None, {"images": images})
    assert got.shape == (batch, model.descriptor_dim) and got.dtype == np.float32
    cosine, max_abs = _rowwise_cosine(expected, got).min(), float(np.abs(expected - got).max())
    record_property("max_abs_diff", max_abs)
    record_property("min_cosine", float(cosine))
    assert cosine >= MIN_COSINE, f"batch {batch}: min cosine {cosine}, max abs diff {max_abs}"
    assert max_abs <= 1e-3 * np.abs(expected).max()


def test_dynamic_batch_rows_are_independent(tiny_onnx: Path, tiny_model) -> None:
    """A batch of 5 (never seen at export) gives, row by row, what each image gives alone."""
    model, _ = tiny_model
    images = np.random.default_rng(7).integers(0, 256, (5, 3, model.height, model.width), dtype=np.uint8)
    session = _cpu_session(tiny_onnx)
    (batched,) = session.run(None, {"images": images})
    singles = np.concatenate([session.run(None, {"images": images[i:i + 1]})[0] for i in range(5)])
    assert batched.shape == (5, model.descriptor_dim)
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-4 * np.abs(singles).max())


def test_torchscript_exporter_static_batch(tmp_path: Path) -> None:
    """The fallback exporter and a frozen batch axis give the same contract (tiny random model)."""
    loaded = random_model("resnet18", height=32, width=16, parts=2, embed_dim=8, seed=3)
    out = export_model(loaded, tmp_path / "static.onnx", exporter="torchscript", dynamic_batch=False, opset=17)
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    meta = metadata_from_proto(proto)
    assert (meta["parts"], meta["embed_dim"], meta["descriptor_dim"], meta["height"]) == (2, 8, 16, 32)
    assert meta["config_digest"] == config_digest(None, loaded.model_config)
    images = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 16), dtype=np.uint8)
    with torch.inference_mode():
        expected = loaded.model(torch.from_numpy(images)).numpy()
    (got,) = _cpu_session(out).run(None, {"images": images})
    assert _rowwise_cosine(expected, got).min() >= MIN_COSINE
    assert [p.name for p in tmp_path.iterdir()] == ["static.onnx"]  # no temporary file left behind


def test_config_digest_is_canonical() -> None:
    a = config_digest({"lr": 0.1, "epochs": 2}, {"arch": "resnet18", "parts": 6})
    b = config_digest({"epochs": 2, "lr": 0.1}, {"parts": 6, "arch": "resnet18"})
    assert a == b and len(a) == 64
    assert a != config_digest({"lr": 0.01, "epochs": 2}, {"arch": "resnet18", "parts": 6})
    assert config_digest(None, {"arch": "resnet18"}) != config_digest({}, {"arch": "resnet18"})


def test_read_metadata_rejects_incomplete_models(tiny_onnx: Path, tmp_path: Path) -> None:
    proto = onnx.load(str(tiny_onnx))
    props = {p.key: p.value for p in proto.metadata_props}

    def write(meta: dict[str, str], name: str) -> Path:
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(tmp_path / name))
        return tmp_path / name

    with pytest.raises(UserError, match="parts"):
        read_metadata(write({k: v for k, v in props.items() if k != "parts"}, "missing.onnx"))
    with pytest.raises(UserError, match="not parts\\*embed_dim"):
        read_metadata(write({**props, "descriptor_dim": "7"}, "inconsistent.onnx"))
    with pytest.raises(UserError, match="not an integer"):
        read_metadata(write({**props, "height": "tall"}, "garbled.onnx"))
    with pytest.raises(UserError, match="not found"):
        read_metadata(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        read_metadata(tmp_path / "junk.onnx")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.onnx"
    _io.atomic_write_bytes(target, b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_user_errors(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        export_onnx(tmp_path / "absent.pt", tmp_path / "m.onnx")
    with pytest.raises(UserError, match="opset >= 17"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", opset=16)
    with pytest.raises(UserError, match="valid exporters: dynamo, torchscript"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", exporter="jit")
    with pytest.raises(UserError, match="valid archs"):
        random_model("vgg16")
    assert export_cli(["onnx", "--checkpoint", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "checkpoint not found" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
