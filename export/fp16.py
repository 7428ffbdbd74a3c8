"""An exported fp32 ONNX model converted to fp16 inside, uint8 in and float32 out as before.

TensorRT 11 removed the weak-typing precision flags (``BuilderFlag.FP16`` and friends; "Migrating
from TensorRT 10.x to 11.x", section "Strongly Typed Networks Are Now Required"): a network runs in
the types its ONNX graph declares, so an fp16 engine is built from an fp16 graph. NVIDIA's migration
guide uses ModelOpt AutoCast for the conversion; we use ``onnxconverter_common.float16`` (Microsoft's
converter, a small pure-Python package), which does the same for a convolutional network like ours.

Two details of our graph:

* The model casts its uint8 input to float inside the graph. The converter rewrites the *types*
  of a ``Cast``'s output but not its ``to`` attribute, which gives a graph ONNX Runtime refuses
  ("Type (tensor(float16)) of output arg ... does not match expected type (tensor(float))"), so
  ``Cast`` is kept in fp32 and the converter adds an fp32 -> fp16 cast after it.
* ``keep_io_types=True`` keeps the float32 output: the descriptor contract is float32 whatever
  runs inside (docs/contracts.md).

The metadata is carried over unchanged; the converted graph is an intermediate of the TensorRT build
and is not served by itself, so the engine keeps the fp32 model's fingerprint (its sidecar says
``precision: fp16``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["to_fp16"]


def to_fp16(onnx_path: str | Path) -> Any:
    """The fp16 version of an exported model, as an ``onnx.ModelProto``.

    Args:
        onnx_path: a model written by ``python -m export onnx``.

    Returns:
        The converted model (weights and activations fp16; input uint8, output float32).

    Raises:
        UserError: the file is not a readable ONNX model, or ``onnxconverter-common`` is missing.
    """
    import onnx

    from export.artifact import load_onnx_proto

    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise UserError("fp16 conversion needs onnxconverter-common (pip install onnxconverter-common; it is in "
                        "requirements-gpu.txt)") from exc
    proto = load_onnx_proto(onnx_path)
    with warnings.catch_warnings():
        # "the float32 number 9e-08 will be truncated to 1e-07": expected for tiny BatchNorm-folded weights.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            proto, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "Cast"])
    onnx.checker.check_model(converted)
    fp16 = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in converted.graph.initializer)
    logger.info("converted %s to fp16 (%d of %d initializers fp16)", onnx_path, fp16, len(converted.graph.initializer))
    return converted
