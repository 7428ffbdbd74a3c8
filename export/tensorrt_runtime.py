"""Running a serialized TensorRT engine (``model.plan``) from Python, for verification and benchmarks.

TensorRT 10's name-based I/O API: ``set_input_shape`` picks the batch inside the engine's optimization
profile, ``set_tensor_address`` binds device pointers, ``execute_async_v3`` enqueues on a CUDA stream.
Device memory comes from PyTorch's CUDA allocator (torch is already a dependency of ``export``) so no
pycuda / cuda-python is needed; serving's own TensorRT embedder is separate and torch-free.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from export.artifact import INPUT_NAME, OUTPUT_NAME
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["TensorRTRunner"]


class TensorRTRunner:
    """A deserialized engine with one execution context; call it like an embedder.

    Args:
        plan_path: a file written by :func:`export.tensorrt_build.build_engine`.

    Attributes:
        min_batch, opt_batch, max_batch: the batch range of the engine's optimization profile 0.
        height, width, dim: input size and descriptor size.

    Raises:
        UserError: missing file, or an engine TensorRT cannot load here (another TensorRT version or
            GPU architecture built it).
    """

    def __init__(self, plan_path: str | Path) -> None:
        import tensorrt as trt
        import torch

        path = Path(plan_path)
        if not path.is_file():
            raise UserError(f"TensorRT engine not found: {path}")
        self._torch = torch
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT {trt.__version__} cannot load {path}; engines only load with the TensorRT "
                            "version and GPU type that built them, so rebuild it here with `python -m export tensorrt`")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if INPUT_NAME not in names or OUTPUT_NAME not in names:
            raise UserError(f"{path} has tensors {names}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}")
        self.context = self.engine.create_execution_context()
        low, opt, high = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.opt_batch, self.max_batch = int(low[0]), int(opt[0]), int(high[0])
        _, _, self.height, self.width = (int(v) for v in self.engine.get_tensor_shape(INPUT_NAME))
        self.dim = int(self.engine.get_tensor_shape(OUTPUT_NAME)[1])

    def run_device(self, images):
        """Run on a CUDA uint8 tensor ``[B, 3, H, W]``; returns a CUDA float32 tensor ``[B, D]``.

        Enqueued on PyTorch's current stream, so it is ordered after the copy that produced ``images``.
        """
        batch = int(images.shape[0])
        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(f"batch {batch} is outside the engine's profile [{self.min_batch}, {self.max_batch}]")
        images = images.contiguous()
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        out = self._torch.empty((batch, self.dim), dtype=self._torch.float32, device=images.device)
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = self._torch.cuda.current_stream(images.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        return out

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Host uint8 ``[B, 3, H, W]`` -> host float32 ``[B, D]`` (copies included)."""
        device_images = self._torch.from_numpy(np.ascontiguousarray(images)).to("cuda")
        out = self.run_device(device_images)
        return out.cpu().numpy()  # .cpu() synchronises the stream
