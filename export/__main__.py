"""``python -m export <command>``: checkpoint -> ONNX -> TensorRT -> Triton, each verified.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``triton`` does not pay for importing torch.
"""

from __future__ import annotations

import sys

from xmreid.cli import run

COMMANDS: dict[str, tuple[str, str]] = {
    "onnx": ("export.onnx_export", "export a checkpoint to ONNX (uint8 RGB in, K*256 descriptor out)"),
    "verify": ("export.verify", "compare PyTorch and ONNX Runtime outputs, or an INT8 model with its fp32 parent"),
    "quantize": ("export.quantize", "quantize the ONNX model to INT8 (QDQ), calibrated on RGB and infrared crops"),
    "tensorrt": ("export.tensorrt_build", "build a TensorRT engine from the ONNX model and verify it"),
    "triton": ("export.triton", "write a Triton Inference Server model repository"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command (see :func:`xmreid.cli.run`); returns the exit status."""
    return run("python -m export", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
