"""A Triton Python-backend model that runs the exported ONNX file with ONNX Runtime (test fixture).

The Triton bundled with the ``nvidia-pytriton`` wheel has the Python backend but not the ONNX Runtime
backend, so the tests serve the repository ``python -m export triton`` writes with its ``backend`` switched
to ``python`` and this file beside ``model.onnx``: the same config (names, dims, max batch, dynamic
batching, warmup, parameters) meets a genuine Triton server and its dynamic batcher.

Tensors cross the stub boundary by DLPack, not ``as_numpy()`` / ``Tensor(name, array)``: that Triton's
stub was built against NumPy 1 (pytriton pins ``numpy<2``), and with NumPy 2 those copy the wrong number of
bytes (inputs read as one repeated byte, outputs arrive empty). DLPack does not depend on NumPy's C ABI.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Concatenates the requests Triton batched together, runs them in one ONNX Runtime call, splits the result."""

    def initialize(self, args: dict) -> None:
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the test machine has 2 cores shared with the server under test
        self.session = ort.InferenceSession(os.path.join(version_dir, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        arrays = [np.from_dlpack(pb_utils.get_input_tensor_by_name(r, "images")) for r in requests]
        out = self.session.run(["descriptors"], {"images": np.ascontiguousarray(np.concatenate(arrays))})[0]
        responses, start = [], 0
        for array in arrays:
            part = np.ascontiguousarray(out[start:start + len(array)], dtype=np.float32)
            start += len(array)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack("descriptors", part)]))
        return responses
