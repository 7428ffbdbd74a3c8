"""``python -m export <command>``: checkpoint -> ONNX -> TensorRT -> Triton, each verified.

Each command lives in its own module exposing ``main(argv) -> int``; modules are imported
only when their command runs so that ``triton`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import sys
from importlib import metadata

from export.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "onnx": ("export.onnx_export", "export a checkpoint to ONNX (uint8 RGB in, K*256 descriptor out)"),
    "verify": ("export.verify", "compare PyTorch and ONNX Runtime outputs, or an INT8 model with its fp32 parent"),
    "quantize": ("export.quantize", "quantize the ONNX model to INT8 (QDQ), calibrated on RGB and infrared crops"),
    "tensorrt": ("export.tensorrt_build", "build a TensorRT engine from the ONNX model and verify it"),
    "triton": ("export.triton", "write a Triton Inference Server model repository"),
}


def _version() -> str:
    """The installed package's version (pyproject.toml, the one version source; serving/version.py reads the same)."""
    try:
        return metadata.version("xmreid")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _usage() -> str:
    lines = ["usage: python -m export [--version] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"python -m export {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
