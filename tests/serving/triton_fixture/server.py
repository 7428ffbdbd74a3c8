"""Start a real Triton Inference Server for the tests: the ``tritonserver`` binary of the nvidia-pytriton wheel.

``make triton-server`` installs that wheel's files (without its Python dependencies, which pin NumPy 1) into
``.triton/`` at the repository root; ``XMREID_TRITON_HOME`` names another such directory, and a pytriton
installed in the environment is found too. :func:`find_triton` says why not when none is there, so the
tests skip with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODEL_PY = Path(__file__).with_name("model.py")


@dataclass(frozen=True)
class TritonDist:
    """Where the wheel's pieces are: the server binary, its bundled libraries, the Python backend."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


def find_triton() -> tuple[TritonDist | None, str]:
    """The Triton distribution to use, or None and the reason there is none."""
    homes = [Path(os.environ["XMREID_TRITON_HOME"])] if os.environ.get("XMREID_TRITON_HOME") else []
    homes.append(REPO / ".triton")
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        homes.append(Path(spec.origin).parent.parent)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for home in homes:
        dist = home / "pytriton" / "tritonserver"
        binary = dist / "bin" / "tritonserver"
        if binary.is_file():
            stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
            if not stub.is_file():
                return None, f"{home}'s Triton has no Python backend stub for Python {version}"
            return TritonDist(binary, home / "nvidia_pytriton.libs", dist / "backends" / "python", stub), ""
    return None, ("no tritonserver binary: `make triton-server` installs nvidia-pytriton's bundled Triton into "
                  ".triton/ (or set XMREID_TRITON_HOME to a directory holding pytriton/tritonserver)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def python_backend_repository(repo: Path) -> None:
    """Switch every model of an exported repository to the Python backend running ONNX Runtime (see model.py)."""
    for config in repo.glob("*/config.pbtxt"):
        text = config.read_text()
        assert 'backend: "onnxruntime"' in text, f"{config} is not an exported ONNX model"
        config.write_text(text.replace('backend: "onnxruntime"', 'backend: "python"'))
        shutil.copy(MODEL_PY, config.parent / "1" / "model.py")


class TritonServer:
    """A ``tritonserver`` process over ``repo`` on free loopback ports (gRPC only)."""

    def __init__(self, dist: TritonDist, repo: Path, workdir: Path) -> None:
        self.dist, self.repo, self.workdir = dist, repo, workdir
        self.grpc_port = _free_port()
        self.url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _backends(self) -> Path:
        # The stub for this Python must sit in the backend directory as `triton_python_backend_stub`.
        backends = self.workdir / "backends" / "python"
        backends.mkdir(parents=True, exist_ok=True)
        for item in self.dist.python_backend.iterdir():
            if item.is_file() and not (backends / item.name).exists():
                (backends / item.name).symlink_to(item)
        shutil.copy(self.dist.stub, backends / "triton_python_backend_stub")
        return backends.parent

    def start(self, timeout_s: float = 90.0) -> TritonServer:
        """Start and wait until every model is ready.

        Raises:
            RuntimeError: the server exited or was not ready in time (the message has its log's tail).
        """
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.dist.libs), libdir, env.get("LD_LIBRARY_PATH"))
                                                 if p)
        # The stub embeds this Python; give it this environment's packages (numpy, onnxruntime).
        env["PYTHONPATH"] = os.pathsep.join([*site.getsitepackages(), str(REPO)])
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        command = [str(self.dist.binary), f"--model-repository={self.repo}", f"--backend-directory={self._backends()}",
                   f"--grpc-port={self.grpc_port}", "--allow-http=false", "--allow-metrics=false",
                   "--exit-timeout-secs=5", "--log-verbose=0"]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tritonserver exited with {self.process.returncode}: {self.log_tail()}")
                try:
                    if client.is_server_ready(client_timeout=1.0):
                        return self
                except grpcclient.InferenceServerException:
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"tritonserver was not ready after {timeout_s:g} s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 15 s (the process group: the Python backend stubs too)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        if getattr(self, "log", None) is not None:
            self.log.close()
