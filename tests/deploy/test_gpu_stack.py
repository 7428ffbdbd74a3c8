"""The GPU deployment files agree with each other: wheels only, one CUDA major, the image's Python and shape.

No GPU or Docker engine is needed: pip resolves ``requirements-gpu.txt`` binary-only for the image's
platform from the public registry alone (metadata only, see ``tests/deploy/stack.py``) and the
Dockerfile is read as text. The tests that resolve skip, with the reason, only when the registry
cannot be reached from here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.stack import (
    GPU_REQUIREMENTS,
    IMAGE_PLATFORMS,
    REPO,
    ResolveError,
    cuda_majors,
    dockerfile_facts,
    option_lines,
    pip_command,
    read_requirements,
    registry_unreachable_reason,
    resolve,
    split_name,
)

pytestmark = pytest.mark.deploy
DOCKERFILE = REPO / "Dockerfile"
#: The old TensorRT pin: on the public registry a source package whose build fetches NVIDIA's wheels.
SOURCE_ONLY_PIN = "tensorrt-cu12==11.4.0.106"


@pytest.fixture(scope="module")
def registry() -> None:
    reason = registry_unreachable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gpu_report(registry: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """pip's report for requirements-gpu.txt, resolved once for the module's tests."""
    return resolve(GPU_REQUIREMENTS, _image_python(), tmp_path_factory.mktemp("gpu_resolve"))


def _image_python() -> str:
    return dockerfile_facts(DOCKERFILE)["python"]


def _pins() -> dict[str, str]:
    return dict(split_name(r) for r in read_requirements(GPU_REQUIREMENTS))


def test_every_gpu_package_is_pinned_exactly_and_needs_no_other_index() -> None:
    pins = _pins()
    assert {"onnxruntime-gpu", "faiss-gpu", "tensorrt-cu12-bindings", "cuda-python"} <= set(pins)
    assert all(pins.values()), pins  # == pins only, no ranges
    assert option_lines(GPU_REQUIREMENTS) == []  # no --extra-index-url / --find-links: the public registry alone
    assert "tensorrt-cu12" not in pins and "tensorrt-cu12-libs" not in pins  # source-only there


def test_the_dry_run_is_the_image_install(tmp_path: Path) -> None:
    cmd = pip_command(GPU_REQUIREMENTS, "3.11", tmp_path)
    flags = " ".join(cmd[cmd.index("install"):])
    assert ("install --dry-run --ignore-installed --only-binary=:all: --platform manylinux_2_28_x86_64 "
            "--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --python-version 3.11 "
            "--implementation cp --target ") in flags
    assert f"--report {tmp_path / 'report.json'}" in flags and flags.endswith(f"-r {GPU_REQUIREMENTS}")
    assert "--extra-index-url" not in flags and "--find-links" not in flags


def test_an_unreachable_registry_is_a_reason_not_an_error() -> None:
    reason = registry_unreachable_reason("http://127.0.0.1:9/simple", timeout=5)
    assert reason and reason.startswith("the package registry cannot be reached (http://127.0.0.1:9/simple/pip/")


def test_requirements_resolve_to_wheels_of_one_cuda_major(gpu_report: dict) -> None:
    installed = gpu_report["install"]
    assert all(item["download_info"]["url"].endswith(".whl") for item in installed)
    majors = cuda_majors(installed)
    assert {"onnxruntime-gpu", "faiss-gpu", "tensorrt-cu12-bindings", "cuda-python", "cuda-bindings",
            "nvidia-cudnn-cu12", "nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12"} <= set(majors)
    mixed = {name: m for name, m in majors.items() if m != {12}}
    assert not mixed, f"packages outside CUDA 12: {mixed}"
    versions = {item["metadata"]["name"].replace("_", "-").lower(): item["metadata"]["version"] for item in installed}
    assert all(versions[name] == version for name, version in _pins().items()), versions  # the pins, as pinned


def test_the_image_install_resolves_as_one_binary_only(registry: None, tmp_path: Path) -> None:
    # The Dockerfile installs requirements-gpu.txt and requirements-serve.txt in one pip command, with every
    # platform tag its glibc takes (so it gets newer CUDA 12 libraries than the three-tag check above).
    files = dockerfile_facts(DOCKERFILE)["requirements"]
    reqs = tmp_path / "image.txt"
    reqs.write_text("".join(f"-r {REPO / name}\n" for name in files))
    installed = resolve(reqs, _image_python(), tmp_path / "resolve", platforms=IMAGE_PLATFORMS)["install"]
    assert all(item["download_info"]["url"].endswith(".whl") for item in installed)
    names = {item["metadata"]["name"].replace("_", "-").lower() for item in installed}
    assert {"onnxruntime-gpu", "faiss-gpu", "fastapi", "uvicorn", "tritonclient"} <= names
    assert not {"onnxruntime", "faiss-cpu"} & names  # the CPU flavours share module names with the GPU ones
    assert set().union(*cuda_majors(installed).values()) == {12}


def test_a_source_only_pin_fails_the_resolve(registry: None, tmp_path: Path) -> None:
    reqs = tmp_path / "requirements-gpu.txt"
    reqs.write_text(GPU_REQUIREMENTS.read_text() + f"{SOURCE_ONLY_PIN}\n")
    with pytest.raises(ResolveError, match=r"(?s)binary-only.*tensorrt-cu12==11\.4\.0\.106"):
        resolve(reqs, _image_python(), tmp_path / "resolve")


def test_a_mixed_requirements_file_is_caught(registry: None, tmp_path: Path) -> None:
    # onnxruntime-gpu 1.31 is built for CUDA 13, faiss-gpu 1.15 for CUDA 12. CUDA 13's curand wheel is
    # tagged manylinux_2_27 only, which the image takes: resolve with all of the image's tags.
    reqs = tmp_path / "mixed.txt"
    reqs.write_text("onnxruntime-gpu[cuda,cudnn]==1.31.1\nfaiss-gpu==1.15.1\n")
    majors = cuda_majors(resolve(reqs, _image_python(), tmp_path / "resolve", platforms=IMAGE_PLATFORMS)["install"])
    assert majors["onnxruntime-gpu"] == {13} and majors["faiss-gpu"] == {12}
    assert any(m == {13} for n, m in majors.items() if n.startswith("nvidia-"))  # its CUDA 13 libraries too
    assert len(set().union(*majors.values())) > 1


def test_major_rules_on_hand_made_metadata() -> None:
    def item(name, version, requires=()):
        return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}

    majors = cuda_majors([item("nvidia-cuda-runtime", "13.0.96"), item("nvidia-cufft", "12.0.0"),
                          item("nvidia-cudnn-cu12", "9.1"), item("cuda-bindings", "13.4.0"),
                          item("tensorrt_cu12_bindings", "11.4.0.106"),
                          item("onnxruntime-gpu", "1.2", ['nvidia-cudnn-cu13~=9.0; extra == "cudnn"']),
                          item("numpy", "2.0")])
    assert majors == {"nvidia-cuda-runtime": {13}, "nvidia-cufft": {13}, "nvidia-cudnn-cu12": {12},
                      "cuda-bindings": {13}, "tensorrt-cu12-bindings": {12}, "onnxruntime-gpu": {13}}


def test_dockerfile_matches_the_cpu_side_and_the_pins() -> None:
    facts = dockerfile_facts(DOCKERFILE)
    # Same Python minor as the CPU side (CI and the dev machine run the tests on it).
    assert facts["python"] == f"{sys.version_info.major}.{sys.version_info.minor}", facts["base"]
    assert "bookworm" in facts["base"]  # glibc 2.36: takes the manylinux_2_28 wheels the resolve checks
    assert facts["requirements"] == ["requirements-gpu.txt", "requirements-serve.txt"]
    assert facts["cmd"] == ["python", "-m", "serving", "serve"]  # exec form: SIGTERM reaches the server
    assert facts["user"] not in (None, "root", "0") and facts["healthcheck"]


def test_dockerfile_adds_tensorrt_only_when_asked_at_the_pinned_version(tmp_path: Path) -> None:
    facts = dockerfile_facts(DOCKERFILE)
    assert facts["args"].get("TENSORRT") == "0"  # off by default: the image builds from the public registry
    nvidia = [run for run in facts["runs"] if "pypi.nvidia.com" in run]
    assert len(nvidia) == 1 and re.search(r'if \[ "\$TENSORRT" = 1 \]; then .*--extra-index-url https://pypi'
                                          r'\.nvidia\.com "tensorrt-cu12-libs==\$trt" "tensorrt-cu12==\$trt"',
                                          nvidia[0]), nvidia
    # The image reads TensorRT's version off the bindings pin: the same sed on the real file gives the pin.
    sed = re.search(r"sed -n '([^']+)' requirements-gpu.txt", nvidia[0])
    assert sed, nvidia[0]
    version = subprocess.run(["sed", "-n", sed.group(1), str(GPU_REQUIREMENTS)], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version == _pins()["tensorrt-cu12-bindings"]
    # ... and so does the manual command the requirements file's comment gives.
    comment = re.search(r"#\s+pip install --extra-index-url https://pypi\.nvidia\.com (.+)", GPU_REQUIREMENTS.read_text())
    assert comment and comment.group(1).split() == [f"tensorrt-cu12-libs=={version}", f"tensorrt-cu12=={version}"]
