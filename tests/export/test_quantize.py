"""``python -m export quantize``: a contract-keeping INT8 model, its metadata, and one-sentence refusals (exit 2)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.__main__ import main as export_cli
from export.artifact import METADATA_KEYS, read_metadata
from export.calibration import MIN_CALIBRATION_IMAGES, CalibrationReader, select_calibration_images
from export.ort import create_session
from export.parity import image_batch
from export.quantize import is_quantized, quantization_settings, quantize_onnx
from xmreid.errors import UserError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_model_keeps_the_contract_and_names_its_parent(tiny_onnx: Path, tiny_int8: Path) -> None:
    proto = onnx.load(str(tiny_int8))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("descriptors", onnx.TensorProto.FLOAT)
    assert not inp.type.tensor_type.shape.dim[0].HasField("dim_value")  # the batch axis stays dynamic
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    parent, meta = read_metadata(tiny_onnx), read_metadata(tiny_int8)
    assert {k: meta[k] for k in METADATA_KEYS} == {k: parent[k] for k in METADATA_KEYS}
    assert is_quantized(meta) and not is_quantized(parent)
    assert meta["parent_fingerprint"] == _sha256(tiny_onnx) != _sha256(tiny_int8)
    settings = quantization_settings(meta)
    assert settings["format"] == "QDQ" and settings["method"] == "minmax" and settings["types"] == "u8s8"
    assert settings["per_channel"] and settings["reduce_range"] and settings["calibration_images"] == 64
    assert settings["calibration_modalities"] == {"ir": 32, "rgb": 32}
    assert settings["calibration_source"] == "sysu:train"


def test_int8_descriptors_follow_fp32_on_real_crops(tiny_onnx: Path, tiny_int8: Path, sysu_root: Path) -> None:
    meta = read_metadata(tiny_onnx)
    images = image_batch(sysu_root, 32, meta["height"], meta["width"])
    fp32 = create_session(tiny_onnx, "cpu").run(None, {"images": images})[0]
    int8 = create_session(tiny_int8, "cpu").run(None, {"images": images})[0]
    assert int8.dtype == np.float32 and int8.shape == fp32.shape == (32, meta["descriptor_dim"])
    # A few-step model has a less benign range than the trained demo (min 0.998 there); 0.98 catches a broken graph.
    assert _cosines(fp32.astype(np.float64), int8.astype(np.float64)).min() >= 0.98


def test_calibration_takes_both_modalities_of_the_train_identities(sysu_root: Path) -> None:
    from training.data import build_dataset

    picks = select_calibration_images(sysu_root, 40)
    assert picks.source == "sysu:train" and picks.modalities == {"ir": 20, "rgb": 20}
    test_ids = {r.pid for r in build_dataset("sysu", sysu_root).test}
    assert not {int(p.parent.name) for p in picks.files} & test_ids
    cams = [int(p.parent.parent.name.removeprefix("cam")) for p in picks.files]
    assert {c in (3, 6) for c in cams[:2]} == {True, False}  # interleaved: any prefix holds both modalities
    assert select_calibration_images(sysu_root, 40).files == picks.files  # seeded
    assert select_calibration_images(sysu_root, 40, seed=1).files != picks.files


def test_calibration_reads_modalities_from_folder_names(sysu_root: Path, tmp_path: Path) -> None:
    src = sorted(sysu_root.rglob("*.jpg"))
    for i in range(40):
        sub = tmp_path / ("Thermal" if i < 10 else "visible") / f"{i:03d}.jpg"
        sub.parent.mkdir(exist_ok=True)
        sub.write_bytes(src[i].read_bytes())
    picks = select_calibration_images(tmp_path, 32)
    assert picks.source == "folder" and picks.modalities == {"ir": 10, "rgb": 22}  # the small group gives all
    reader = CalibrationReader(picks.files, 24, 8, batch_size=8)
    assert len(reader) == 4 and reader.get_next()["images"].shape == (8, 3, 24, 8)
    reader.set_range(3, 4)
    assert reader.get_next()["images"].dtype == np.uint8 and reader.get_next() is None


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = export_cli(["quantize", *argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return rc, captured.err.strip()


def _one_sentence(message: str) -> bool:
    return message.startswith("error: ") and "\n" not in message and message.count(". ") == 0


def test_bad_calibration_folders_exit_2_with_one_sentence(tiny_onnx: Path, sysu_root: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "int8.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    few.mkdir()
    for i, path in enumerate(sorted(sysu_root.rglob("*.jpg"))[:3]):
        (few / f"{i}.jpg").write_bytes(path.read_bytes())
    a_file = few / "0.jpg"
    cases = [(tmp_path / "missing", "does not exist"), (a_file, "is not a folder"), (empty, "holds no images"),
             (few, f"holds 3 images; static quantization needs at least {MIN_CALIBRATION_IMAGES}")]
    for folder, expected in cases:
        rc, err = _run(["--onnx", str(tiny_onnx), "--calibration-images", str(folder), "--out", str(out)], capsys)
        assert rc == 2 and expected in err and _one_sentence(err), (folder, err)
    rc, err = _run(["--onnx", str(tiny_onnx), "--calibration-images", str(sysu_root), "--out", str(out),
                    "--num-images", "8"], capsys)
    assert rc == 2 and f"needs at least {MIN_CALIBRATION_IMAGES} calibration images" in err and _one_sentence(err)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for i, path in enumerate(sorted(sysu_root.rglob("*.jpg"))[:40]):
        (damaged / f"{i}.jpg").write_bytes(path.read_bytes() if i else b"not a jpeg")
    rc, err = _run(["--onnx", str(tiny_onnx), "--calibration-images", str(damaged), "--out", str(out)], capsys)
    assert rc == 2 and "not a decodable image" in err and _one_sentence(err)
    assert not out.exists()


def test_models_that_are_not_fp32_dfe_exports_exit_2(tiny_int8: Path, sysu_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx at all")
    cases = [(foreign, "lacks the export metadata"), (garbage, "is not a readable ONNX model"),
             (tmp_path / "missing.onnx", "ONNX model not found"), (tiny_int8, "is already an INT8 model")]
    for model, expected in cases:
        rc, err = _run(["--onnx", str(model), "--calibration-images", str(sysu_root), "--out",
                        str(tmp_path / "out.onnx")], capsys)
        assert rc == 2 and expected in err and "\n" not in err, (model, err)


def test_bad_options_name_the_valid_values(tiny_onnx: Path, sysu_root: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--onnx", str(tiny_onnx), "--calibration-images", str(sysu_root), "--out", str(tmp_path / "x.onnx")]
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2 with the choices
        export_cli(["quantize", *common, "--method", "kl"])
    assert exc.value.code == 2 and "minmax" in capsys.readouterr().err
    rc, err = _run([*common, "--target", "tensorrt", "--types", "u8s8"], capsys)
    assert rc == 2 and "needs --types s8s8" in err
    rc, err = _run([*common, "--target", "tensorrt", "--reduce-range"], capsys)
    assert rc == 2 and "TensorRT runs full 8-bit weights" in err
    with pytest.raises(UserError, match="valid splits: train, test, all"):
        select_calibration_images(sysu_root, 64, split="val")


def test_tensorrt_target_is_symmetric_with_float_biases(tiny_onnx: Path, sysu_root: Path, tmp_path: Path) -> None:
    from onnx import numpy_helper

    from export.tensorrt_build import check_int8_model

    path = quantize_onnx(tiny_onnx, sysu_root, tmp_path / "trt.int8.onnx", num_images=32, target="tensorrt")
    proto = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    zero_points = [init[n.input[2]] for n in proto.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
    assert zero_points and all((z == 0).all() and z.dtype == np.int8 for z in zero_points)
    conv_biases = [n.input[2] for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert conv_biases and all(init[b].dtype == np.float32 for b in conv_biases)
    assert quantization_settings(read_metadata(path))["types"] == "s8s8"
    assert check_int8_model(path)["precision"] == "int8"


def test_serving_index_accepts_the_int8_model(tiny_int8: Path, sysu_root: Path, tmp_path: Path) -> None:
    """``python -m serving index --model model.int8.onnx`` like any ONNX file; the gallery records its own sha256."""
    from serving.indexing import main as index_main

    gallery = tmp_path / "gallery"
    rc = index_main(["--model", str(tiny_int8), "--images", str(sysu_root), "--gallery", str(gallery),
                     "--cameras", "1,2", "--split", "test", "--no-progress"])
    assert rc == 0
    manifest = json.loads((gallery / "manifest.json").read_text())
    assert manifest["fingerprint"] == _sha256(tiny_int8)


def test_an_fp32_gallery_takes_its_int8_model_and_refuses_other_models(tiny_onnx: Path, tiny_int8: Path,
                                                                        sysu_root: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The upgrade path: a gallery indexed in fp32 keeps working when the server moves to the INT8 model."""
    from serving.embedders import load_embedder
    from serving.indexing import main as index_main

    int8 = load_embedder(tiny_int8, backend="onnxruntime")
    assert int8.fingerprint == _sha256(tiny_int8) and int8.family == _sha256(tiny_onnx)
    assert load_embedder(tiny_onnx, backend="onnxruntime").family == _sha256(tiny_onnx)

    gallery = tmp_path / "gallery"
    common = ["--images", str(sysu_root), "--gallery", str(gallery), "--split", "test", "--no-progress"]
    assert index_main(["--model", str(tiny_onnx), "--cameras", "1", *common]) == 0
    with caplog.at_level("WARNING"):
        assert index_main(["--model", str(tiny_int8), "--cameras", "2", *common]) == 0
    assert sum("same fp32 model" in r.getMessage() for r in caplog.records) == 1
    manifest = json.loads((gallery / "manifest.json").read_text())
    assert manifest["fingerprint"] == manifest["family"] == _sha256(tiny_onnx), "the gallery keeps naming its indexer"

    proto = onnx.load(str(tiny_onnx))  # another fp32 model (same graph, other bytes): another family
    proto.doc_string = "retrained"
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    from xmreid.errors import UserError as ServingUserError

    with pytest.raises(ServingUserError, match="not an INT8 or fp32 sibling"):
        index_main(["--model", str(other), "--cameras", "2", *common])
