"""ONNX Runtime embedder: the default backend, on CUDA when onnxruntime-gpu sees a GPU, else CPU."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import ArtifactMetadata, file_sha256
from serving.embedders.base import Embedder
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

_INPUT_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


def _cpu_cores() -> int:
    """Cores this process may use (the affinity mask, which containers and ``taskset`` narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def preload_cuda_libraries(ort) -> None:
    """Load the CUDA / cuDNN libraries of NVIDIA's pip wheels before a CUDA session is created.

    requirements-gpu.txt installs CUDA 12 and cuDNN 9 as pip packages (``onnxruntime-gpu[cuda,cudnn]``), not
    system libraries; ONNX Runtime 1.21+ finds them through ``preload_dlls()`` (ONNX Runtime's CUDA EP docs,
    "Install CUDA and cuDNN via pip"). Older versions, or a system CUDA install, need nothing.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a system CUDA install may still work: say so once and go on
        logger.warning("onnxruntime.preload_dlls() failed (%s); relying on the system CUDA libraries", exc)


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build offers it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session_options(intra_op_threads: int | None = None, inter_op_threads: int = 1) -> Any:
    """The ONNX Runtime ``SessionOptions`` the server's embedder runs with (``benchmarks.embed`` times them too).

    Args:
        intra_op_threads: threads inside one operator; default the cores this process may use.
        inter_op_threads: threads across independent operators (see :class:`OnnxRuntimeEmbedder`).

    Returns:
        A fresh ``onnxruntime.SessionOptions``: every graph optimisation, sequential execution, no spinning.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(intra_op_threads or _cpu_cores())
    options.inter_op_num_threads = int(inter_op_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # ORT's pool threads busy-wait between runs by default. In a server the model is idle between
    # requests, and spinning threads steal the cores that decode, search and HTTP need: turning it off
    # cut /search p50 several-fold at concurrency 1 (benchmarks/end_to_end.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


class OnnxRuntimeEmbedder(Embedder):
    """Runs the exported ONNX model with ONNX Runtime.

    Input size, descriptor size and the rest come from the model's metadata properties, written by
    ``export.onnx_export``; the fingerprint is the sha256 of the file. ``InferenceSession.run`` may be
    called concurrently from several threads (ONNX Runtime documents sessions as thread-safe for
    ``Run``), so ``thread_safe`` is True and the micro-batcher may overlap calls.

    Args:
        path: the ``.onnx`` file.
        providers: execution providers in priority order; default CUDA (when available) then CPU.
        intra_op_threads: threads inside one operator; default the cores this process may use.
        inter_op_threads: threads across independent operators; 1, since the graph is one chain of
            convolutions and parallelism across requests comes from batching, not from the graph.
        device_id: CUDA device for the CUDA provider.
    """

    name = "onnxruntime"
    thread_safe = True

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None,
                 intra_op_threads: int | None = None, inter_op_threads: int = 1, device_id: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model not found: {self.path}")
        available = ort.get_available_providers()
        providers = list(providers) if providers is not None else default_providers()
        unknown = [p for p in providers if p not in available]
        if unknown:
            raise UserError(f"execution provider(s) {', '.join(unknown)} not available in this onnxruntime "
                            f"build; available: {', '.join(available)}")
        options = session_options(intra_op_threads, inter_op_threads)
        if "CUDAExecutionProvider" in providers:
            preload_cuda_libraries(ort)
        provider_args = [(p, {"device_id": device_id}) if p == "CUDAExecutionProvider" else p for p in providers]
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=provider_args)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UserError(f"cannot load ONNX model {self.path}: {exc}") from exc

        self.metadata = ArtifactMetadata.from_strings(
            self._session.get_modelmeta().custom_metadata_map, source=self.path.name)
        self.height, self.width, self.dim = self.metadata.height, self.metadata.width, self.metadata.descriptor_dim
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise UserError(f"{self.path.name}: expected one input and one output, found "
                            f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        if inputs[0].type not in _INPUT_TYPES:
            raise UserError(f"{self.path.name}: input {self._input_name!r} has type {inputs[0].type}; "
                            f"supported: {', '.join(_INPUT_TYPES)}")
        self._input_dtype = _INPUT_TYPES[inputs[0].type]
        self.providers = self._session.get_providers()
        self.fingerprint = file_sha256(self.path)
        logger.info("loaded %s with ONNX Runtime (providers %s, %d intra-op threads): input %dx%d, dim %d",
                    self.path.name, ",".join(self.providers), options.intra_op_num_threads,
                    self.height, self.width, self.dim)

    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        if self._input_dtype is not np.uint8:
            batch_nchw = batch_nchw.astype(self._input_dtype)  # float 0-255: normalisation is in-graph
        (out,) = self._session.run([self._output_name], {self._input_name: batch_nchw})
        return out

    def info(self) -> dict:
        return {**super().info(), "providers": list(self.providers), "metadata": dict(self.metadata.raw)}

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
