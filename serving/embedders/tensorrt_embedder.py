"""TensorRT embedder: a serialized engine (``model.plan``) plus its JSON sidecar (``model.plan.json``).

An engine file carries no free-form metadata, so the exporter copies the ONNX metadata next to it. The
sidecar's format, path, reader and writer are the artifact contract's (:mod:`export.artifact`), shared with
``python -m export tensorrt``; this module only runs engines.

The embedder's ``fingerprint`` is ``onnx_sha256``: an engine is a compiled form of one ONNX model, so a
gallery indexed with ONNX Runtime stays searchable after switching to TensorRT (descriptors agree to
the export's verified tolerance), and an engine rebuilt for another GPU does not orphan the gallery.

Needs ``tensorrt`` (>= 10, the named-tensor API) and ``cuda-python`` for device memory; both are imported
only when an engine is loaded, and neither torch nor ``training`` is used.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import (
    SIDECAR_FORMAT,
    ArtifactMetadata,
    cuda_runtime,
    file_sha256,
    read_sidecar,
    sidecar_path,
    tensorrt_unavailable_reason,
)
from serving.embedders.base import Embedder
from xmreid.errors import UserError

__all__ = ["SIDECAR_FORMAT", "TensorRTEmbedder", "read_sidecar", "sidecar_path", "tensorrt_unavailable_reason"]

logger = logging.getLogger(__name__)


def _check(result: Any, what: str) -> Any:
    """Unwrap a cuda-python ``(err, value...)`` tuple, raising on a CUDA error."""
    cudart = cuda_runtime()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error in {what}: {err}")
    return values[0] if len(values) == 1 else values


class TensorRTEmbedder(Embedder):
    """Runs a TensorRT engine with one execution context and buffers sized for the profile's max batch.

    One execution context must not run two batches at once, so ``thread_safe`` is False: the base
    class serialises calls, and batches larger than the engine's profile are split.

    Args:
        path: the ``.plan`` file (its sidecar ``<plan>.json`` beside it).
        device_id: CUDA device to run on.
    """

    name = "tensorrt"
    thread_safe = False

    def __init__(self, path: str | Path, device_id: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"TensorRT engine not found: {self.path}")
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise UserError(f"cannot load {self.path.name} with TensorRT: {reason}; "
                            "use the ONNX model with backend 'onnxruntime' instead")
        import tensorrt as trt

        cudart = cuda_runtime()
        self._cudart, self._device_id = cudart, int(device_id)
        sidecar = read_sidecar(self.path)
        if "plan_sha256" in sidecar and sidecar["plan_sha256"] != file_sha256(self.path):
            raise UserError(f"{sidecar_path(self.path).name} does not describe {self.path.name} (plan_sha256 "
                            "differs): the engine was rebuilt without its sidecar")
        self.sidecar = sidecar
        self.metadata = ArtifactMetadata.from_strings(sidecar["metadata"], source=sidecar_path(self.path).name)
        self.height, self.width, self.dim = self.metadata.height, self.metadata.width, self.metadata.descriptor_dim
        self.fingerprint = sidecar["onnx_sha256"]

        _check(cudart.cudaSetDevice(self._device_id), "cudaSetDevice")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserError(f"TensorRT could not deserialize {self.path.name}: an engine only runs with the "
                            f"TensorRT version and GPU it was built for (this is TensorRT {trt.__version__}); "
                            "rebuild it with `python -m export tensorrt`")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise UserError(f"{self.path.name}: expected one input and one output tensor, found {ins} -> {outs}")
        self._in, self._out = ins[0], outs[0]
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._in)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self._out)))
        _min_shape, _opt_shape, max_shape = self._engine.get_tensor_profile_shape(self._in, 0)
        self.max_batch_size = int(max_shape[0])
        if tuple(max_shape[1:]) != (3, self.height, self.width):
            raise UserError(f"{self.path.name}: engine input shape {tuple(max_shape)} does not match the sidecar's "
                            f"3x{self.height}x{self.width}")

        self._stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        in_bytes = self.max_batch_size * 3 * self.height * self.width * self._in_dtype.itemsize
        out_bytes = self.max_batch_size * self.dim * self._out_dtype.itemsize
        self._d_in = _check(cudart.cudaMalloc(in_bytes), "cudaMalloc(input)")
        self._d_out = _check(cudart.cudaMalloc(out_bytes), "cudaMalloc(output)")
        self._context.set_tensor_address(self._in, int(self._d_in))
        self._context.set_tensor_address(self._out, int(self._d_out))
        logger.info("loaded TensorRT engine %s (TensorRT %s, device %d): input %dx%d, dim %d, max batch %d",
                    self.path.name, trt.__version__, self._device_id, self.height, self.width, self.dim,
                    self.max_batch_size)

    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        # The current device is per host thread in the CUDA runtime; the caller's thread may be new.
        _check(cudart.cudaSetDevice(self._device_id), "cudaSetDevice")
        batch = np.ascontiguousarray(batch_nchw, dtype=self._in_dtype)
        n = batch.shape[0]
        out = np.empty((n, self.dim), dtype=self._out_dtype)
        if not self._context.set_input_shape(self._in, batch.shape):
            raise RuntimeError(f"TensorRT rejected input shape {batch.shape}")
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(self._d_in, batch.ctypes.data, batch.nbytes, h2d, self._stream), "copy in")
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, self._d_out, out.nbytes, d2h, self._stream), "copy out")
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def info(self) -> dict:
        return {**super().info(), "metadata": dict(self.metadata.raw),
                "precision": self.sidecar.get("precision"), "tensorrt_version": self.sidecar.get("tensorrt_version")}

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for name in ("_d_in", "_d_out"):
            ptr = getattr(self, name, None)
            if ptr is not None:
                cudart.cudaFree(ptr)
                setattr(self, name, None)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may already be gone
            self.close()
