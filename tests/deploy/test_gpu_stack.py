"""The GPU deployment files agree with each other: one CUDA major, the image's Python, the Dockerfile's shape.

No GPU or Docker engine is needed: pip resolves ``requirements-gpu.txt`` for the image's platform
(metadata only, see ``tests/deploy/stack.py``) and the Dockerfile is read as text. These tests need
the package registry; ``XMREID_OFFLINE=1`` skips the two that resolve.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.deploy.stack import (REPO, cuda_majors, dockerfile_facts, read_requirements, resolvable, resolve,
                                split_name)

pytestmark = pytest.mark.deploy
online = pytest.mark.skipif(os.environ.get("XMREID_OFFLINE") == "1", reason="XMREID_OFFLINE=1: no package registry")
GPU_REQUIREMENTS = REPO / "requirements-gpu.txt"
DOCKERFILE = REPO / "Dockerfile"


def _image_python() -> str:
    return dockerfile_facts(DOCKERFILE)["python"]


def _majors_of(requirements: list[str], workdir: Path) -> dict[str, set[int]]:
    to_resolve, by_name = resolvable(requirements)
    return cuda_majors(resolve(to_resolve, _image_python(), workdir), by_name)


def test_every_gpu_package_is_pinned_exactly() -> None:
    reqs = read_requirements(GPU_REQUIREMENTS)
    names = {split_name(r)[0]: split_name(r)[1] for r in reqs}
    assert {"onnxruntime-gpu", "faiss-gpu", "tensorrt-cu12", "cuda-python"} <= set(names)
    assert all(version for version in names.values()), names  # == pins only, no ranges


@online
def test_requirements_resolve_to_one_cuda_major(tmp_path: Path) -> None:
    majors = _majors_of(read_requirements(GPU_REQUIREMENTS), tmp_path)
    assert {"onnxruntime-gpu", "faiss-gpu", "tensorrt-cu12", "cuda-python", "nvidia-cudnn-cu12",
            "nvidia-cuda-runtime-cu12"} <= set(majors)
    mixed = {name: m for name, m in majors.items() if m != {12}}
    assert not mixed, f"packages outside CUDA 12: {mixed}"


@online
def test_a_mixed_requirements_file_is_caught(tmp_path: Path) -> None:
    # onnxruntime-gpu 1.31 is built for CUDA 13, faiss-gpu 1.15 for CUDA 12: the mix the issue found.
    majors = _majors_of(["onnxruntime-gpu[cuda,cudnn]==1.31.1", "faiss-gpu==1.15.1"], tmp_path)
    assert majors["onnxruntime-gpu"] == {13} and majors["faiss-gpu"] == {12}
    assert any(m == {13} for n, m in majors.items() if n.startswith("nvidia-"))  # its CUDA 13 libraries too
    assert len(set().union(*majors.values())) > 1


def test_major_rules_on_hand_made_metadata() -> None:
    def item(name, version, requires=()):
        return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}

    majors = cuda_majors([item("nvidia-cuda-runtime", "13.0.96"), item("nvidia-cufft", "12.0.0"),
                          item("nvidia-cudnn-cu12", "9.1"), item("cuda-bindings", "13.4.0"),
                          item("onnxruntime-gpu", "1.2", ['nvidia-cudnn-cu13~=9.0; extra == "cudnn"']),
                          item("numpy", "2.0")], ["tensorrt-cu12"])
    assert majors == {"nvidia-cuda-runtime": {13}, "nvidia-cufft": {13}, "nvidia-cudnn-cu12": {12},
                      "cuda-bindings": {13}, "onnxruntime-gpu": {13}, "tensorrt-cu12": {12}}


def test_dockerfile_matches_the_cpu_side_and_the_pins() -> None:
    facts = dockerfile_facts(DOCKERFILE)
    # Same Python minor as the CPU side (CI and the dev machine run the tests on it).
    assert facts["python"] == f"{sys.version_info.major}.{sys.version_info.minor}", facts["base"]
    assert facts["base"].endswith("-bookworm") or "bookworm" in facts["base"]  # glibc the resolve check assumes
    assert facts["requirements"] == ["requirements-gpu.txt", "requirements-serve.txt"]
    assert facts["cmd"] == ["python", "-m", "serving", "serve"]  # exec form: SIGTERM reaches the server
    assert facts["user"] not in (None, "root", "0") and facts["healthcheck"]
