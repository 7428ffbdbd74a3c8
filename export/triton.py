"""``python -m export triton``: a Triton Inference Server model repository for the exported model.

Layout (Triton's model repository convention)::

    OUT/<name>/config.pbtxt
    OUT/<name>/1/model.onnx      (platform onnxruntime_onnx)   or   OUT/<name>/1/model.plan (tensorrt_plan)

``max_batch_size > 0`` tells Triton the first axis is the batch, so ``dims`` list the per-image shape
only: ``images`` TYPE_UINT8 ``[3, H, W]`` and ``descriptors`` TYPE_FP32 ``[D]``, with H, W and D read
from the ONNX metadata (never typed twice). Dynamic batching lets Triton merge concurrent requests,
the same job serving's micro-batcher does in-process. Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from export._io import atomic_copy, atomic_write_bytes
from export.artifact import INPUT_NAME, OUTPUT_NAME, batch_dim_is_dynamic, load_onnx_proto, metadata_from_proto
from export.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "config_pbtxt", "default_preferred_batch_sizes", "main", "write_repository"]

KINDS = ("KIND_GPU", "KIND_CPU")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """A quarter, half and all of ``max_batch_size``: batches the scheduler should try to form."""
    return sorted({size for size in (max_batch_size // 4, max_batch_size // 2, max_batch_size) if size >= 1})


def config_pbtxt(*, name: str, platform: str, max_batch_size: int, height: int, width: int, dim: int,
                 preferred_batch_sizes: Sequence[int], max_queue_delay_us: int, instances: int, kind: str) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    preferred = ", ".join(str(size) for size in preferred_batch_sizes)
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch_size}
input [
  {{
    name: "{INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ 3, {height}, {width} ]
  }}
]
output [
  {{
    name: "{OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {dim} ]
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {preferred} ]
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [
  {{
    count: {instances}
    kind: {kind}
  }}
]
"""


def write_repository(onnx_path: str | Path, out: str | Path, *, plan: str | Path | None = None,
                     name: str = "xmreid", max_batch_size: int = 64, instances: int = 1, kind: str = "KIND_GPU",
                     max_queue_delay_us: int = 2000, preferred_batch_sizes: Sequence[int] | None = None) -> Path:
    """Write (or update) one model of a Triton model repository.

    Args:
        onnx_path: the exported ONNX model; its metadata gives the dims, and it is served unless ``plan`` is given.
        out: the repository root (created if needed).
        plan: a TensorRT engine built from ``onnx_path``: served instead, with platform ``tensorrt_plan``.
        name: the model name (folder name and ``name`` field).
        max_batch_size: largest batch Triton forms (for a plan: at most the engine profile's max batch).
        instances: model instances per device.
        kind: ``KIND_GPU`` or ``KIND_CPU`` (a TensorRT plan needs a GPU).
        max_queue_delay_us: how long Triton may hold a request to grow a batch.
        preferred_batch_sizes: default :func:`default_preferred_batch_sizes`.

    Returns:
        The model folder ``out/name``.

    Raises:
        UserError: bad values, a model without metadata or without a dynamic batch axis, a missing plan.
    """
    if not _NAME.match(name):
        raise UserError(f"--name {name!r} must start with a letter or digit and use only letters, digits, "
                        "'_', '.' and '-'")
    if max_batch_size < 1 or instances < 1 or max_queue_delay_us < 0:
        raise UserError(f"need max_batch_size >= 1, instances >= 1, max_queue_delay_us >= 0; got "
                        f"{max_batch_size}, {instances}, {max_queue_delay_us}")
    if kind not in KINDS:
        raise UserError(f"unknown instance kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if plan is not None and kind != "KIND_GPU":
        raise UserError("a TensorRT plan runs on a GPU only; use --kind KIND_GPU (or serve the ONNX model on CPU)")
    preferred = list(preferred_batch_sizes) if preferred_batch_sizes else default_preferred_batch_sizes(max_batch_size)
    if min(preferred) < 1 or max(preferred) > max_batch_size:
        raise UserError(f"preferred batch sizes {preferred} must lie in [1, max_batch_size={max_batch_size}]")
    proto = load_onnx_proto(onnx_path)
    meta = metadata_from_proto(proto, source=str(onnx_path))
    if not batch_dim_is_dynamic(proto):
        raise UserError(f"{onnx_path} has a static batch axis; re-export it without --static-batch for Triton")
    del proto
    if plan is not None and not Path(plan).is_file():
        raise UserError(f"TensorRT plan not found: {plan}")

    model_dir = Path(out) / name
    platform, source, filename = ("tensorrt_plan", Path(plan), "model.plan") if plan is not None else \
        ("onnxruntime_onnx", Path(onnx_path), "model.onnx")
    atomic_copy(source, model_dir / "1" / filename)
    text = config_pbtxt(name=name, platform=platform, max_batch_size=max_batch_size, height=meta["height"],
                        width=meta["width"], dim=meta["descriptor_dim"], preferred_batch_sizes=preferred,
                        max_queue_delay_us=max_queue_delay_us, instances=instances, kind=kind)
    atomic_write_bytes(model_dir / "config.pbtxt", text.encode("utf-8"))
    if plan is not None:
        logger.info("Triton loads the plan only if its optimization profile's max batch is >= %d "
                    "(python -m export tensorrt --max-batch %d)", max_batch_size, max_batch_size)
    logger.info("wrote Triton model %s (%s, %dx%d -> %d)", model_dir, platform, meta["height"], meta["width"],
                meta["descriptor_dim"])
    return model_dir


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--preferred-batch-sizes must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export triton", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="model from `python -m export onnx` (gives the dims)")
    parser.add_argument("--plan", type=Path, help="serve this TensorRT engine instead of the ONNX model")
    parser.add_argument("--out", type=Path, required=True, help="model repository root")
    parser.add_argument("--name", default="xmreid", help="model name (default xmreid)")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--instances", type=int, default=1, help="instances per device (default 1)")
    parser.add_argument("--kind", default="KIND_GPU", choices=KINDS)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--preferred-batch-sizes", type=_sizes, help="default: max/4, max/2, max")
    args = parser.parse_args(argv)
    model_dir = write_repository(args.onnx, args.out, plan=args.plan, name=args.name,
                                 max_batch_size=args.max_batch_size, instances=args.instances, kind=args.kind,
                                 max_queue_delay_us=args.max_queue_delay_us,
                                 preferred_batch_sizes=args.preferred_batch_sizes)
    print(f"wrote {model_dir / 'config.pbtxt'}")
    return 0
