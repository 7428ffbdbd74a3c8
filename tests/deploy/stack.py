"""Read the GPU deployment files and ask pip what they resolve to, without a GPU or the wheels.

Kept in one place so the tests, ``make docker-check`` and the wheel-size table of ``docs/gpu.md`` agree:

* :func:`resolve` runs, for a requirements file, exactly the install the image does, as a dry run::

      pip install --dry-run --ignore-installed --only-binary=:all: --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --python-version 3.11
        --implementation cp --target T --report R.json -r requirements-gpu.txt

  against the public registry alone: pip's configuration files and the ``PIP_*`` variables that add
  indexes, local wheel folders or constraints are left out (:func:`pip_env`), so an extra index or a
  machine's own wheels cannot hide a package that exists only as a source distribution. ``PIP_INDEX_URL``
  is kept: a site's mirror of the public registry stands in for it. ``--use-feature=fast-deps`` is
  added where pip has it: it changes how pip reads a wheel's metadata (HTTP range requests), not what
  resolves, so a registry or mirror that serves no ``.metadata`` files costs seconds instead of
  downloading every wheel (about 1.8 GB for this file).
* :func:`cuda_majors` finds the CUDA major of every resolved NVIDIA / CUDA package: from a ``-cuNN``
  name suffix (``nvidia-cudnn-cu12``, ``tensorrt-cu12-bindings``), from the version of the unsuffixed
  CUDA 13-style runtime names (``nvidia-cuda-runtime 13.0``) and of ``cuda-python`` / ``cuda-bindings``,
  and for ``onnxruntime-gpu`` / ``faiss-gpu`` (no suffix) from the NVIDIA packages their metadata requires.
* :func:`wheel_sizes` asks the registry for the size of every wheel of a resolution (one HEAD request
  each); ``python -m tests.deploy.stack [requirements file]`` prints them, resolved with every tag the
  image takes (:data:`IMAGE_PLATFORMS`, what the image downloads), as the tables ``docs/gpu.md`` carries.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU_REQUIREMENTS = REPO / "requirements-gpu.txt"
#: The public registry's simple index; ``PIP_INDEX_URL`` (a site's mirror of it) replaces it.
PUBLIC_INDEX = "https://pypi.org/simple"
#: The platform tags of the check. pip takes ``--platform`` literally, so this is stricter than the image
#: (Debian 12, glibc 2.36, also takes e.g. ``manylinux_2_27`` / ``_2_31`` / ``_2_34`` wheels): a pin whose
#: only Linux wheel carries one of those would fail here and need its tag added.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: Every manylinux tag the image's glibc accepts that NVIDIA's and the GPU packages' wheels use.
IMAGE_PLATFORMS = ("manylinux_2_36_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64",
                   "manylinux_2_31_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
                   "manylinux_2_17_x86_64", "manylinux2014_x86_64")
#: ``PIP_*`` variables that do not change where packages come from, kept for the dry run.
_KEPT_PIP_VARS = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT",
                  "PIP_RETRIES", "PIP_PROXY", "PIP_TRUSTED_HOST"}
_SUFFIX = re.compile(r"-cu(\d+)(?:-|$)")
#: Packages whose CUDA major is the major of their own version.
_VERSIONED = re.compile(r"^(nvidia-cuda-(runtime|nvrtc|cupti|nvcc)|cuda-python|cuda-bindings)$")


class ResolveError(RuntimeError):
    """pip could not resolve a requirements file binary-only; the message ends with pip's own last lines."""


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


def option_lines(path: Path) -> list[str]:
    """The pip option lines (``--extra-index-url ...``, ``-r ...``) a requirements file itself carries."""
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip().startswith("-")]


def split_name(requirement: str) -> tuple[str, str]:
    """``"onnxruntime-gpu[cuda]==1.2"`` -> ``("onnxruntime-gpu", "1.2")`` (the pinned version, or '')."""
    m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(\[[^\]]*\])?\s*(==\s*([^\s;,]+))?", requirement)
    if not m:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return canonical(m.group(1)), m.group(4) or ""


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL") or PUBLIC_INDEX


def pip_env() -> dict[str, str]:
    """The environment of the dry run: no pip configuration file, no extra index, local wheels or constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _KEPT_PIP_VARS}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def registry_unreachable_reason(url: str | None = None, timeout: float = 15) -> str | None:
    """Why the registry's index cannot be read from here (a clause for a skip), or ``None`` when it can."""
    url = (url or index_url()).rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:  # the server answered: it is reachable, the probe path is not
        return None if exc.code < 500 else f"the package registry answered {exc.code} for {url}"
    except (OSError, ValueError) as exc:
        return f"the package registry cannot be reached ({url}: {getattr(exc, 'reason', exc)})"


def pip_command(requirements: Path, python_version: str, workdir: Path,
                platforms: tuple[str, ...] = PLATFORMS) -> list[str]:
    """The binary-only dry run of ``requirements`` for the image's Python and platform (module docstring)."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:"]
    for tag in platforms:
        cmd += ["--platform", tag]
    return [*cmd, "--python-version", python_version, "--implementation", "cp", "--target", str(workdir / "target"), "--report", str(workdir / "report.json"), "--index-url", index_url(), "--quiet", "-r", str(requirements)]


def resolve(requirements: Path, python_version: str, workdir: Path, timeout: float = 600,
            platforms: tuple[str, ...] = PLATFORMS) -> dict:
    """pip's installation report for ``requirements`` on the image's platform, wheels only.

    Raises:
        ResolveError: pip could not resolve (a source-only pin, a missing version); pip's last lines say which.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = pip_command(requirements, python_version, workdir, platforms)
    proc = subprocess.run([*cmd, "--use-feature=fast-deps"], capture_output=True, text=True, timeout=timeout,
                          env=pip_env(), check=False)
    if proc.returncode != 0 and "invalid choice" in proc.stderr and "fast-deps" in proc.stderr:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=pip_env(),
                              check=False)  # a pip without the feature
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise ResolveError(f"pip could not resolve {requirements.name} binary-only for Python {python_version}:"
                           f"\n{tail}")
    return json.loads((workdir / "report.json").read_text())


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


def cuda_majors(installed: list[dict]) -> dict[str, set[int]]:
    """``{package: {CUDA majors}}`` for every NVIDIA / CUDA package of a report's install list."""
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
    return out


def wheel_sizes(installed: list[dict], timeout: float = 30) -> dict[str, tuple[str, str, int]]:
    """``{package: (version, wheel file name, bytes)}`` for a report's install list (HEAD of each wheel's URL)."""
    out = {}
    for item in installed:
        url = item["download_info"]["url"]
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as r:
            size = int(r.headers["Content-Length"])
        meta = item["metadata"]
        out[canonical(meta["name"])] = (str(meta["version"]), url.rsplit("/", 1)[-1], size)
    return out


def dockerfile_facts(path: Path) -> dict:
    """What the deployment needs of the Dockerfile, read off its text."""
    text = path.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    base = next(ln.split()[1] for ln in lines if ln.upper().startswith("FROM "))
    py = re.match(r"^python:(\d+)\.(\d+)", base)
    cmd = [ln for ln in lines if ln.upper().startswith("CMD ")]
    user = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    runs = [ln for ln in "\n".join(lines).replace("\\\n", " ").splitlines() if ln.upper().startswith("RUN ")]
    pip_lines = [ln for ln in runs if "pip install" in ln and "-r " in ln]
    installs = sorted(set(re.findall(r"-r\s+(\S+)", " ".join(pip_lines))))
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S*)$", "\n".join(lines), re.MULTILINE))
    return {
        "base": base,
        "python": f"{py.group(1)}.{py.group(2)}" if py else None,
        "cmd": json.loads(cmd[-1][4:]) if cmd and cmd[-1][4:].lstrip().startswith("[") else None,
        "user": user[-1] if user else None,
        "healthcheck": any(ln.upper().startswith("HEALTHCHECK ") for ln in lines),
        "requirements": installs,
        "args": args,
        "runs": runs,
    }


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Print the wheels a requirements file resolves to in the image (all its platform tags), with their sizes."""
    p = argparse.ArgumentParser(prog="python -m tests.deploy.stack", description=main.__doc__)
    p.add_argument("requirements", nargs="?", default=str(GPU_REQUIREMENTS))
    p.add_argument("--python-version", default=dockerfile_facts(REPO / "Dockerfile")["python"])
    args = p.parse_args(argv)
    reason = registry_unreachable_reason()
    if reason:
        print(f"cannot list the wheels: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="resolve_") as tmp:
        try:
            report = resolve(Path(args.requirements), args.python_version, Path(tmp), platforms=IMAGE_PLATFORMS)
        except ResolveError as exc:
            print(exc, file=sys.stderr)
            return 1
    sizes = wheel_sizes(report["install"])
    print("| package | version | wheel | MB |\n|---|---|---|---:|")
    for name, (version, wheel, size) in sorted(sizes.items(), key=lambda kv: -kv[1][2]):
        print(f"| {name} | {version} | {wheel} | {_megabytes(size)} |")
    print(f"| **all {len(sizes)} wheels** | | | **{_megabytes(sum(s for _, _, s in sizes.values()))}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
