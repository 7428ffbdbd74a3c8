"""serving.embedders: ONNX Runtime vs PyTorch parity, metadata, thread safety, validation, backend choice."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from serving.embedders import BACKENDS, Embedder, load_embedder
from serving.embedders.onnxruntime_embedder import OnnxRuntimeEmbedder
from serving.embedders.tensorrt_embedder import read_sidecar, sidecar_path, tensorrt_unavailable_reason
from xmreid.errors import UserError

TRT_MISSING = tensorrt_unavailable_reason()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def ort(tiny_onnx: Path) -> OnnxRuntimeEmbedder:
    embedder = load_embedder(tiny_onnx)
    assert isinstance(embedder, OnnxRuntimeEmbedder)
    return embedder


@pytest.fixture(scope="module")
def crops(ort: Embedder, sysu_root: Path) -> np.ndarray:
    """Real crops (RGB and IR cameras) of the synthetic tree at the model's size, plus two random images."""
    from training.data.images import read_image

    files = sorted(sysu_root.glob("cam[1-6]/*/0001.jpg"))[:6]
    real = [read_image(f, ort.height, ort.width) for f in files]
    noise = np.random.default_rng(0).integers(0, 256, (2, ort.height, ort.width, 3), dtype=np.uint8)
    return np.concatenate([np.stack(real), noise])


def test_metadata_comes_from_the_onnx_file(ort: OnnxRuntimeEmbedder, tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    import onnx
    import torch

    props = {p.key: p.value for p in onnx.load(str(tiny_onnx), load_external_data=False).metadata_props}
    assert (ort.height, ort.width, ort.dim) == (int(props["height"]), int(props["width"]),
                                               int(props["descriptor_dim"]))
    config = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model_config"]
    assert (ort.height, ort.width, ort.dim) == (config["height"], config["width"], config["parts"] * config["embed_dim"])
    assert ort.fingerprint == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert ort.thread_safe is True and ort.name == "onnxruntime"
    assert "CPUExecutionProvider" in ort.providers
    info = ort.info()
    assert info["dim"] == ort.dim and info["metadata"]["descriptor_dim"] == str(ort.dim)
    json.dumps(info)  # JSON-ready for the API's model block


def test_onnx_runtime_matches_pytorch(ort: OnnxRuntimeEmbedder, tiny_checkpoint: Path, crops: np.ndarray) -> None:
    import torch

    from training.model import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    with torch.no_grad():
        reference = model(torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2)))).numpy()
    out = ort.embed(crops)
    assert out.dtype == np.float32 and out.shape == (len(crops), ort.dim)
    assert _cosine(out, reference).min() >= 0.9999
    np.testing.assert_allclose(out, reference, atol=1e-3 * np.abs(reference).max())


def test_torch_backend_matches_onnx_runtime(ort: OnnxRuntimeEmbedder, tiny_checkpoint: Path,
                                            crops: np.ndarray) -> None:
    torch_embedder = load_embedder(tiny_checkpoint)  # auto: .pt -> torch
    assert torch_embedder.name == "torch" and torch_embedder.thread_safe is False
    assert (torch_embedder.height, torch_embedder.width, torch_embedder.dim) == (ort.height, ort.width, ort.dim)
    assert torch_embedder.fingerprint == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert _cosine(torch_embedder.embed(crops), ort.embed(crops)).min() >= 0.9999


def test_batch_composition_does_not_change_descriptors(ort: OnnxRuntimeEmbedder, crops: np.ndarray) -> None:
    """A crop's descriptor is the same alone, in a batch, and when the batch is split (eval-mode BN)."""
    together = ort.embed(crops)
    alone = np.concatenate([ort.embed(crops[i:i + 1]) for i in range(len(crops))])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-4)
    split = load_embedder(ort.path)
    split.max_batch_size = 3  # as a TensorRT profile would cap it
    np.testing.assert_allclose(split.embed(crops), together, rtol=1e-4, atol=1e-4)
    assert ort.embed(crops[:0]).shape == (0, ort.dim)


def test_concurrent_embed_gives_the_sequential_results(ort: OnnxRuntimeEmbedder, crops: np.ndarray) -> None:
    batches = [np.roll(crops, shift=i, axis=0)[: 1 + i % len(crops)] for i in range(12)]
    expected = [ort.embed(b) for b in batches]
    results: list[np.ndarray | None] = [None] * len(batches)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(batches))

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = ort.embed(batches[i])
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (lambda e: np.zeros((1, e.height, e.width, 3), np.float32), "uint8"),
    (lambda e: np.zeros((1, e.width, e.height, 3), np.uint8), r"\[B, H, W, 3\]"),
    (lambda e: np.zeros((e.height, e.width, 3), np.uint8), r"\[B, H, W, 3\]"),
    (lambda e: np.zeros((1, 3, e.height, e.width), np.uint8), r"\[B, H, W, 3\]"),
    (lambda e: [[0]], "numpy array"),
])
def test_embed_rejects_wrong_input_clearly(ort: OnnxRuntimeEmbedder, bad, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ort.embed(bad(ort))


def test_load_embedder_refusals(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid backends: " + ", ".join(BACKENDS)):
        load_embedder(tiny_onnx, backend="openvino")
    with pytest.raises(UserError, match="not found"):
        load_embedder(tmp_path / "missing.onnx")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"x")
    with pytest.raises(UserError, match="valid suffixes"):
        load_embedder(odd)
    with pytest.raises(UserError, match="backend 'torch' cannot load a .onnx"):
        load_embedder(tiny_onnx, backend="torch")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        load_embedder(garbage)
    with pytest.raises(UserError, match="provider"):
        load_embedder(tiny_onnx, providers=["NoSuchExecutionProvider"])


def test_onnx_without_metadata_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(tiny_onnx), load_external_data=False)
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in ("height", "descriptor_dim")]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(proto, str(stripped))
    with pytest.raises(UserError, match="lacks height, descriptor_dim"):
        load_embedder(stripped)


def test_onnx_runtime_path_imports_neither_torch_nor_training(tiny_onnx: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from serving.embedders import load_embedder\n"
        "import serving.core.imageio, serving.indexing, serving.indexing.crawl\n"
        f"e = load_embedder({str(tiny_onnx)!r})\n"
        "e.embed(np.zeros((1, e.height, e.width, 3), np.uint8))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'torchvision'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------------------------- TensorRT


def _fake_plan(tmp_path: Path, tiny_onnx: Path) -> Path:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really an engine")
    sidecar_path(plan).write_text(json.dumps({
        "format": "xmreid-tensorrt-sidecar/1", "metadata": {"height": "96", "width": "32", "descriptor_dim": "1536"},
        "onnx_sha256": hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()}))
    return plan


def test_sidecar_contract(tmp_path: Path, tiny_onnx: Path) -> None:
    plan = _fake_plan(tmp_path, tiny_onnx)
    assert sidecar_path(plan).name == "model.plan.json"
    assert read_sidecar(plan)["metadata"]["descriptor_dim"] == "1536"
    sidecar_path(plan).write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        read_sidecar(plan)
    sidecar_path(plan).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(UserError, match="onnx_sha256"):
        read_sidecar(plan)
    sidecar_path(plan).unlink()
    with pytest.raises(UserError, match="no sidecar"):
        read_sidecar(plan)


@pytest.mark.skipif(TRT_MISSING is None, reason="TensorRT is usable here; this checks the fallback without it")
def test_without_tensorrt_auto_uses_onnx_runtime_and_tensorrt_is_a_clear_error(tmp_path: Path,
                                                                               tiny_onnx: Path) -> None:
    onnx_copy = tmp_path / "model.onnx"
    onnx_copy.write_bytes(tiny_onnx.read_bytes())
    plan = _fake_plan(tmp_path, tiny_onnx)
    assert load_embedder(onnx_copy).name == "onnxruntime"  # an engine beside it, but no TensorRT here
    with pytest.raises(UserError, match="TensorRT"):
        load_embedder(plan)
    with pytest.raises(UserError, match="TensorRT"):
        load_embedder(onnx_copy, backend="tensorrt")
    with pytest.raises(UserError, match="backend 'onnxruntime' cannot load a .plan"):
        load_embedder(plan, backend="onnxruntime")


@pytest.mark.tensorrt
@pytest.mark.skipif(TRT_MISSING is not None, reason=f"TensorRT not usable: {TRT_MISSING}")
def test_tensorrt_engine_matches_onnx_runtime(tmp_path: Path, tiny_onnx: Path, ort: OnnxRuntimeEmbedder,
                                              crops: np.ndarray) -> None:
    import tensorrt as trt

    onnx_copy = tmp_path / "model.onnx"
    onnx_copy.write_bytes(tiny_onnx.read_bytes())
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(onnx_copy.read_bytes()), [parser.get_error(i) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = (3, ort.height, ort.width)
    profile.set_shape("images", (1, *shape), (4, *shape), (4, *shape))
    config.add_optimization_profile(profile)
    plan = tmp_path / "model.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))
    sidecar_path(plan).write_text(json.dumps({"metadata": dict(ort.metadata.raw), "precision": "fp32",
                                              "onnx_sha256": ort.fingerprint,
                                              "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest()}))
    engine = load_embedder(onnx_copy)  # auto prefers the engine built from this very ONNX file
    assert engine.name == "tensorrt" and engine.fingerprint == ort.fingerprint and engine.max_batch_size == 4
    assert _cosine(engine.embed(crops), ort.embed(crops)).min() >= 0.9999  # 8 crops: split into 4 + 4


def test_int8_model_loads_and_embeds_like_any_onnx_file(ort: OnnxRuntimeEmbedder, tiny_onnx: Path, sysu_root: Path,
                                                        crops: np.ndarray, tmp_path: Path) -> None:
    """A QDQ model from ``python -m export quantize`` keeps the uint8 input, the metadata and the output contract."""
    from export.quantize import quantize_onnx
    from serving.embedders.base import ArtifactMetadata

    path = quantize_onnx(tiny_onnx, sysu_root, tmp_path / "model.int8.onnx", num_images=32)
    int8 = load_embedder(path)
    assert isinstance(int8, OnnxRuntimeEmbedder) and int8._input_dtype is np.uint8
    assert (int8.height, int8.width, int8.dim) == (ort.height, ort.width, ort.dim)
    assert int8.fingerprint == hashlib.sha256(path.read_bytes()).hexdigest() != ort.fingerprint
    raw = dict(int8.metadata.raw)
    assert raw["precision"] == "int8" and raw["parent_fingerprint"] == ort.fingerprint
    assert ArtifactMetadata.from_strings(raw, source=path.name).descriptor_dim == ort.dim
    json.dumps(int8.info())
    got, ref = int8.embed(crops[:6]), ort.embed(crops[:6])  # the real crops (the noise is out of distribution)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert _cosine(got.astype(np.float64), ref.astype(np.float64)).min() >= 0.98
