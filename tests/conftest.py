"""Session-wide fixtures shared by every stage's tests.

Each fixture builds one artifact of the pipeline at toy size (a 12-identity synthetic SYSU-MM01
tree, a ResNet-18 trained for a few steps, its ONNX export, a gallery) once per test session, through
the same public functions the command lines use, so the stage tests exercise real artifacts. It also switches
on the strict CI mode of ``ci_policy`` (under ``CI=true`` only GPU/TensorRT tests may skip).
"""

from __future__ import annotations

import os
from pathlib import Path

import ci_policy
import pytest

# Two cores: keep BLAS/OpenMP from oversubscribing when tests run beside other work.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"


def pytest_configure(config: pytest.Config) -> None:
    """Strict CI mode (``tests/ci_policy.py``): under ``CI=true`` a skip that needs no GPU/TensorRT is a failure."""
    if not config.pluginmanager.has_plugin("ci_policy"):
        config.pluginmanager.register(ci_policy, "ci_policy")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sysu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic SYSU-MM01 tree (12 identities, 4 images per identity per camera)."""
    from training.data.synthetic import generate

    out = tmp_path_factory.mktemp("sysu")
    return generate(out, layout="sysu", ids=12, seed=0, images_per_camera=4, show_progress=False)


@pytest.fixture(scope="session")
def regdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic RegDB tree (10 identities, 4 visible + 4 thermal images each)."""
    from training.data.synthetic import generate

    out = tmp_path_factory.mktemp("regdb")
    return generate(out, layout="regdb", ids=10, seed=0, images_per_camera=4, show_progress=False)


@pytest.fixture(scope="session")
def tiny_checkpoint(sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``last.pt`` of ``configs/tiny.yaml`` trained on ``sysu_root`` (seconds on CPU)."""
    from training.train import main as train_main

    out = tmp_path_factory.mktemp("tiny_run")
    rc = train_main(["--config", str(TINY_CONFIG), "--data-root", str(sysu_root), "--output-dir", str(out),
                     "--no-progress"])
    assert rc == 0
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported to ONNX (uint8 NCHW in, descriptor out, metadata attached)."""
    from export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("tiny_onnx") / "model.onnx"
    return export_onnx(tiny_checkpoint, out)


@pytest.fixture(scope="session")
def tiny_gallery(tiny_onnx: Path, sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The RGB cameras (1, 2, 4, 5) of the test identities of ``sysu_root``, indexed with ``tiny_onnx``."""
    from serving.indexing import main as index_main

    out = tmp_path_factory.mktemp("gallery") / "gallery"
    rc = index_main(["--model", str(tiny_onnx), "--images", str(sysu_root), "--gallery", str(out),
                     "--cameras", "1,2,4,5", "--split", "test", "--no-progress"])
    assert rc == 0
    return out
