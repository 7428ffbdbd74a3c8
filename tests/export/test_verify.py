"""``python -m export verify`` and the retrieval check: pass on the real export, fail on a wrong one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.__main__ import main as export_cli
from export.models import model_from_checkpoint, random_model
from export.onnx_export import export_model
from export.ort import create_session
from export.parity import compare, image_batch
from export.retrieval_check import rank1_change
from export.verify import verify_onnx
from xmreid.errors import UserError


@pytest.fixture(scope="module")
def impostor_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture and sizes as the tiny checkpoint, different (random) weights."""
    config = model_from_checkpoint(tiny_checkpoint).model_config
    loaded = random_model(config["arch"], height=config["height"], width=config["width"], parts=config["parts"],
                          embed_dim=config["embed_dim"], seed=123)
    # TorchScript exporter: 4x faster to export than dynamo, and the check only needs different weights.
    return export_model(loaded, tmp_path_factory.mktemp("impostor") / "impostor.onnx", exporter="torchscript")


def test_verify_cli_passes_on_its_own_export(tiny_checkpoint: Path, tiny_onnx: Path, sysu_root: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    rc = export_cli(["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx), "--images",
                     str(sysu_root), "--batch-sizes", "1,3,8", "--provider", "cpu", "--json", str(report_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "max abs diff" in out and "min cosine" in out
    report = json.loads(report_path.read_text())
    assert [(r["source"], r["batch_size"]) for r in report["rows"]] == [
        ("random", 1), ("random", 3), ("random", 8), ("images", 1), ("images", 3), ("images", 8)]
    assert report["passed"] and report["min_cosine"] >= 0.9999
    assert report["providers"][0] == "CPUExecutionProvider"


def test_verify_cli_fails_on_a_mismatched_model(tiny_checkpoint: Path, impostor_onnx: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = export_cli(["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(impostor_onnx),
                     "--batch-sizes", "1,3", "--provider", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAILED" in out and "FAIL" in out.splitlines()[2]


def test_verify_refuses_other_input_sizes(tiny_onnx: Path) -> None:
    other = random_model("resnet18", height=32, width=16, parts=2, embed_dim=8)
    with pytest.raises(UserError, match="was exported for"):
        verify_onnx(other, tiny_onnx)


def test_verify_rejects_bad_batch_sizes(tiny_checkpoint: Path, tiny_onnx: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert export_cli(["verify", "--checkpoint", str(tiny_checkpoint), "--onnx", str(tiny_onnx),
                       "--batch-sizes", "0,2"]) == 1
    assert "positive integers" in capsys.readouterr().err


def test_compare_numbers() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    cand = np.array([[1.0, 1.0], [0.0, 2.5]], dtype=np.float32)
    got = compare(ref, cand)
    assert got["max_abs_diff"] == pytest.approx(1.0)
    assert got["min_cosine"] == pytest.approx(1 / np.sqrt(2))
    assert got["mean_cosine"] == pytest.approx((1 / np.sqrt(2) + 1) / 2)


def test_image_batch_reads_and_repeats(sysu_root: Path, tmp_path: Path) -> None:
    few = tmp_path / "few"
    few.mkdir()
    src = sorted(sysu_root.rglob("*.jpg"))[:2]
    for i, path in enumerate(src):
        (few / f"{i}.jpg").write_bytes(path.read_bytes())
    batch = image_batch(few, 5, 40, 20)
    assert batch.shape == (5, 3, 40, 20) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[2], batch[0])  # two files repeated to five
    assert not np.array_equal(batch[0], batch[1])
    with pytest.raises(UserError, match="no images"):
        image_batch(_empty(tmp_path), 1, 8, 8)


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_rank1_change_matches_pytorch_protocol(tiny_checkpoint: Path, tiny_onnx: Path, sysu_root: Path) -> None:
    """ORT vs ORT changes nothing, and ORT's rank-1 equals the PyTorch SYSU protocol's on the same split."""
    from training.data import build_dataset
    from training.protocols import evaluate_sysu

    loaded = model_from_checkpoint(tiny_checkpoint)
    session = create_session(tiny_onnx, "cpu")

    def embed(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": images})[0]

    result = rank1_change(embed, embed, sysu_root, loaded.model.height, loaded.model.width, trials=3)
    assert result["rank1_change"] == 0.0
    assert result["reference"] == result["candidate"]
    torch_r1 = evaluate_sysu(loaded.model, build_dataset("sysu", sysu_root).test, trials=3).metrics["r1"]
    # fp32 rounding can only swap near-ties: allow one query of difference.
    assert abs(result["reference"]["r1"] - torch_r1) <= 1 / result["queries"] + 1e-9

    rng = np.random.default_rng(0)
    noise = rank1_change(embed, lambda x: rng.normal(size=(len(x), loaded.model.descriptor_dim)).astype(np.float32),
                         sysu_root, loaded.model.height, loaded.model.width, trials=3)
    assert noise["reference"] == result["reference"] and noise["candidate"] != result["candidate"]
