"""Read the GPU deployment files and ask pip what they resolve to, without a GPU or the wheels.

Two checks the GPU issue asks for, kept in one place so the tests and ``make docker-check`` agree:

* :func:`resolve` — pip resolves ``requirements-gpu.txt`` for the image's platform and Python
  (``pip install --dry-run --ignore-installed --only-binary=:all: --platform ... --python-version ...
  --report``). ``--use-feature=fast-deps`` reads each wheel's metadata with HTTP range requests
  instead of downloading it (onnxruntime-gpu alone is ~0.3 GB), so a resolve takes seconds; a pip
  without that feature falls back to downloading, into pip's own cache.
* :func:`cuda_majors` — the CUDA major of every resolved NVIDIA / CUDA package: from a ``-cuNN``
  name suffix (``nvidia-cudnn-cu12``, ``tensorrt-cu12-bindings``), from the version of the
  unsuffixed CUDA 13-style runtime names (``nvidia-cuda-runtime 13.0``) and of ``cuda-python`` /
  ``cuda-bindings``, and for ``onnxruntime-gpu`` / ``faiss-gpu`` (no suffix) from the NVIDIA
  packages their metadata requires.

TensorRT's ``tensorrt-cuNN`` / ``tensorrt-cuNN-libs`` are source packages on PyPI that fetch their
binaries from NVIDIA's own index (pypi.nvidia.com, named in the requirements file), which this
machine cannot reach. They are checked by name, and ``tensorrt-cuNN-bindings`` (a real wheel per
Python version on PyPI) is resolved in their place, which proves the version exists for the image's
Python.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: glibc of the image's base (Debian 12 "bookworm": 2.36) and every manylinux tag it accepts.
PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
_SUFFIX = re.compile(r"-cu(\d+)(?:-|$)")
_TENSORRT_SOURCE = re.compile(r"^(tensorrt-cu\d+)(-libs)?$")
#: Packages whose CUDA major is the major of their own version.
_VERSIONED = re.compile(r"^(nvidia-cuda-(runtime|nvrtc|cupti|nvcc)|cuda-python|cuda-bindings)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[str]:
    """Requirement lines of a requirements file (comments and pip option lines removed)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def split_name(requirement: str) -> tuple[str, str]:
    """``"onnxruntime-gpu[cuda]==1.2"`` -> ``("onnxruntime-gpu", "1.2")`` (the pinned version, or '')."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(==\s*([^\s;,]+))?", requirement)
    if not m:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return canonical(m.group(1)), m.group(4) or ""


def resolvable(requirements: list[str]) -> tuple[list[str], list[str]]:
    """(what pip can resolve from PyPI's wheels, TensorRT source-package names checked by name only)."""
    resolve, by_name = [], []
    for req in requirements:
        name, version = split_name(req)
        m = _TENSORRT_SOURCE.match(name)
        if m:
            by_name.append(name)
            if m.group(2) is None:  # the tensorrt-cuNN meta package: resolve its bindings wheel instead
                resolve.append(f"{m.group(1)}-bindings=={version}" if version else f"{m.group(1)}-bindings")
        else:
            resolve.append(req)
    return resolve, by_name


def resolve(requirements: list[str], python_version: str, workdir: Path, timeout: float = 600) -> list[dict]:
    """What pip would install for ``requirements`` on the image's platform: the report's install list.

    Raises:
        RuntimeError: pip could not resolve (its last lines say why).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    reqfile, report = workdir / "requirements.txt", workdir / "report.json"
    reqfile.write_text("\n".join(requirements) + "\n")
    base = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
            "--python-version", python_version, "--implementation", "cp", "--target", str(workdir / "target"),
            "--report", str(report), "--quiet", "-r", str(reqfile)]
    for tag in PLATFORMS:
        base += ["--platform", tag]
    proc = subprocess.run([*base, "--use-feature=fast-deps"], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "fast-deps" in proc.stderr and "resolve" not in proc.stderr.lower():
        proc = subprocess.run(base, capture_output=True, text=True, timeout=timeout)  # a pip without the feature
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise RuntimeError(f"pip could not resolve {requirements} for Python {python_version}:\n{tail}")
    return json.loads(report.read_text())["install"]


def _requires_majors(metadata: dict) -> set[int]:
    """CUDA majors named by the NVIDIA packages a distribution requires (any extra)."""
    majors = set()
    for dep in metadata.get("requires_dist") or []:
        name = canonical(re.split(r"[\s<>=~!;\[(]", dep.strip(), maxsplit=1)[0])
        if not name.startswith("nvidia-"):
            continue
        m = _SUFFIX.search(name)
        if m:
            majors.add(int(m.group(1)))
        else:
            ver = re.search(r"[~=<>]=?\s*(\d+)", dep)
            if _VERSIONED.match(name) and ver:
                majors.add(int(ver.group(1)))
            else:
                majors.add(13)  # NVIDIA dropped the -cuNN suffix from CUDA 13 on
    return majors


def cuda_majors(installed: list[dict], by_name: list[str] = ()) -> dict[str, set[int]]:
    """``{package: {CUDA majors}}`` for every NVIDIA / CUDA package of a resolution (see module docstring)."""
    out: dict[str, set[int]] = {}
    for item in installed:
        meta = item["metadata"]
        name, version = canonical(meta["name"]), str(meta["version"])
        m = _SUFFIX.search(name)
        if m:
            out[name] = {int(m.group(1))}
        elif _VERSIONED.match(name):
            out[name] = {int(version.split(".")[0])}
        elif name.startswith("nvidia-"):
            out[name] = {13}  # unsuffixed NVIDIA library naming: CUDA 13 and later
        elif name in ("onnxruntime-gpu", "faiss-gpu") or name.startswith(("faiss-gpu-", "cupy-")):
            out[name] = _requires_majors(meta) or {-1}  # -1: a GPU package that names no CUDA at all
    for name in by_name:
        m = _SUFFIX.search(name)
        out[name] = {int(m.group(1))} if m else {-1}
    return out


def dockerfile_facts(path: Path) -> dict:
    """What the GPU issue requires of the Dockerfile, read off its text."""
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    base = next(ln.split()[1] for ln in lines if ln.upper().startswith("FROM "))
    py = re.match(r"^python:(\d+)\.(\d+)", base)
    cmd = [ln for ln in lines if ln.upper().startswith("CMD ")]
    user = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    pip_lines = [ln for ln in text.replace("\\\n", " ").splitlines() if "pip install" in ln and "-r " in ln]
    installs = sorted(set(re.findall(r"-r\s+(\S+)", " ".join(pip_lines))))
    return {
        "base": base,
        "python": f"{py.group(1)}.{py.group(2)}" if py else None,
        "cmd": json.loads(cmd[-1][4:]) if cmd and cmd[-1][4:].lstrip().startswith("[") else None,
        "user": user[-1] if user else None,
        "healthcheck": any(ln.upper().startswith("HEALTHCHECK ") for ln in lines),
        "requirements": installs,
    }
