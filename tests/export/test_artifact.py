"""The artifact contract (``export/artifact.py``): torch-free, and one reading of the metadata for both sides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from export.artifact import METADATA_KEYS, RUNTIME_KEYS, ArtifactMetadata, read_metadata, sidecar_path, typed_metadata
from xmreid.errors import UserError

_REPO = Path(__file__).resolve().parents[2]


def test_contract_and_onnx_runtime_embedder_import_without_torch() -> None:
    """serving reads models through the contract; neither may pull torch or ``training`` into a serving image."""
    code = (
        "import sys\n"
        "import export.artifact, xmreid.errors\n"
        "import serving.embedders.onnxruntime_embedder, serving.embedders.tensorrt_embedder\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'training'))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_export_and_runtime_readings_agree(tiny_onnx: Path) -> None:
    meta = read_metadata(tiny_onnx)
    runtime = ArtifactMetadata.from_strings({k: str(v) for k, v in meta.items()}, source=tiny_onnx.name)
    assert (runtime.height, runtime.width, runtime.descriptor_dim, runtime.parts, runtime.embed_dim) == \
        (meta["height"], meta["width"], meta["descriptor_dim"], meta["parts"], meta["embed_dim"])
    assert set(RUNTIME_KEYS) < set(METADATA_KEYS)


def test_runtime_needs_fewer_keys_than_export_tools() -> None:
    minimal = {"height": "96", "width": "32", "descriptor_dim": "1536"}
    assert ArtifactMetadata.from_strings(minimal, source="m").descriptor_dim == 1536
    with pytest.raises(UserError, match="lacks the export metadata"):
        typed_metadata(minimal, source="m")
    with pytest.raises(UserError, match="must be >= 1"):
        ArtifactMetadata.from_strings({**minimal, "width": "0"}, source="m")
    with pytest.raises(UserError, match="valid values: RGB"):
        ArtifactMetadata.from_strings({**minimal, "channel_order": "BGR"}, source="m")


def test_sidecar_sits_beside_the_plan(tmp_path: Path) -> None:
    assert sidecar_path(tmp_path / "model.fp16.plan") == tmp_path / "model.fp16.plan.json"
