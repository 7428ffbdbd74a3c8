"""``python -m export triton``: a Triton Inference Server model repository for the exported model.

Layout (Triton's model repository convention)::

    OUT/<name>/config.pbtxt
    OUT/<name>/1/model.onnx      (backend onnxruntime)   or   OUT/<name>/1/model.plan (backend tensorrt)

``max_batch_size > 0`` tells Triton the first axis is the batch, so ``dims`` list the per-image shape
only: ``images`` TYPE_UINT8 ``[3, H, W]`` and ``descriptors`` TYPE_FP32 ``[D]``, with H, W and D read
from the ONNX metadata (never typed twice), which also goes into the config's ``parameters`` with the
model fingerprint, so ``python -m serving serve --backend triton`` learns everything from Triton. Dynamic
batching lets Triton merge concurrent requests, the same job serving's micro-batcher does in-process.
Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from export.artifact import (
    INPUT_NAME,
    OUTPUT_NAME,
    batch_dim_is_dynamic,
    file_sha256,
    load_onnx_proto,
    metadata_from_proto,
)
from xmreid.atomic import atomic_copy, atomic_write_bytes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "QueuePolicy", "config_pbtxt", "main", "write_repository"]

KINDS = ("KIND_GPU", "KIND_CPU")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class QueuePolicy:
    """Triton's ``default_queue_policy``: how many requests may wait, and for how long, before Triton refuses.

    Attributes:
        max_queue_size: most requests queued per instance group (0: unbounded, Triton's default).
        timeout_us: a request waiting longer is rejected (0: no timeout).
    """

    max_queue_size: int = 0
    timeout_us: int = 0

    @property
    def active(self) -> bool:
        return self.max_queue_size > 0 or self.timeout_us > 0


def _string(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(*, name: str, backend: str, max_batch_size: int, height: int, width: int, dim: int,
                 instances: int, kind: str, parameters: dict[str, str] | None = None,
                 preferred_batch_sizes: Sequence[int] = (), max_queue_delay_us: int | None = None,
                 queue: QueuePolicy = QueuePolicy(), gpus: Sequence[int] = (), warmup_batch_size: int = 1) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``).

    Follows Triton's model-configuration guide: ``dynamic_batching {}`` alone by default (Triton then
    batches whatever is queued, with no delay); a queue delay and preferred sizes only when asked, since
    the guide tunes them from measurements (``perf_analyzer``), not up front. ``model_warmup`` runs one
    zero batch per instance at load, so the first real request does not pay for lazy allocation.
    ``instance_group`` without ``gpus`` puts ``count`` instances on every visible GPU; ``gpus`` pins them.
    ``parameters`` carries the ONNX metadata (fingerprint, sizes) that ``serve --backend triton`` reads.
    """
    lines = [f"name: {_string(name)}", f"backend: {_string(backend)}", f"max_batch_size: {max_batch_size}",
             "input [", "  {", f"    name: {_string(INPUT_NAME)}", "    data_type: TYPE_UINT8",
             f"    dims: [ 3, {height}, {width} ]", "  }", "]",
             "output [", "  {", f"    name: {_string(OUTPUT_NAME)}", "    data_type: TYPE_FP32",
             f"    dims: [ {dim} ]", "  }", "]"]
    batching = []
    if preferred_batch_sizes:
        batching.append(f"  preferred_batch_size: [ {', '.join(str(s) for s in preferred_batch_sizes)} ]")
    if max_queue_delay_us is not None:
        batching.append(f"  max_queue_delay_microseconds: {max_queue_delay_us}")
    if queue.active:
        batching += ["  default_queue_policy {", "    timeout_action: REJECT",
                     f"    default_timeout_microseconds: {queue.timeout_us}",
                     f"    max_queue_size: {queue.max_queue_size}", "  }"]
    lines += (["dynamic_batching {", *batching, "}"] if batching else ["dynamic_batching { }"])
    group = ["  {", f"    count: {instances}", f"    kind: {kind}"]
    if gpus:
        group.append(f"    gpus: [ {', '.join(str(g) for g in gpus)} ]")
    lines += ["instance_group [", *group, "  }", "]"]
    if warmup_batch_size > 0:
        lines += ["model_warmup [", "  {", '    name: "zero_batch"', f"    batch_size: {warmup_batch_size}",
                  "    inputs {", f"      key: {_string(INPUT_NAME)}", "      value {",
                  "        data_type: TYPE_UINT8", f"        dims: [ 3, {height}, {width} ]", "        zero_data: true",
                  "      }", "    }", "  }", "]"]
    for key, value in sorted((parameters or {}).items()):
        lines += ["parameters {", f"  key: {_string(key)}", f"  value: {{ string_value: {_string(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def write_repository(onnx_path: str | Path, out: str | Path, *, plan: str | Path | None = None,
                     name: str = "xmreid", max_batch_size: int = 64, instances: int = 1, kind: str = "KIND_GPU",
                     max_queue_delay_us: int | None = None, preferred_batch_sizes: Sequence[int] | None = None,
                     queue: QueuePolicy = QueuePolicy(), gpus: Sequence[int] = (), warmup_batch_size: int = 1) -> Path:
    """Write (or update) one model of a Triton model repository.

    Args:
        onnx_path: the exported ONNX model; its metadata gives the dims, and it is served unless ``plan`` is given.
        out: the repository root (created if needed).
        plan: a TensorRT engine built from ``onnx_path``: served instead, with backend ``tensorrt``.
        name: the model name (folder name and ``name`` field).
        max_batch_size: largest batch Triton forms (for a plan: at most the engine profile's max batch).
        instances: model instances per device.
        kind: ``KIND_GPU`` or ``KIND_CPU`` (a TensorRT plan needs a GPU).
        max_queue_delay_us: how long Triton may hold a request to grow a batch (None: not set, Triton's 0).
        preferred_batch_sizes: batch sizes the scheduler should aim for (None: not set).
        queue: the queue bound and timeout (default: Triton's, unbounded).
        gpus: GPU indices for the instance group (default: every visible GPU).
        warmup_batch_size: batch size of the zero-batch warmup at load (0: no warmup).

    Returns:
        The model folder ``out/name``.

    Raises:
        UserError: bad values, a model without metadata or without a dynamic batch axis, a missing plan.
    """
    if not _NAME.match(name):
        raise UserError(f"--name {name!r} must start with a letter or digit and use only letters, digits, "
                        "'_', '.' and '-'")
    if max_batch_size < 1 or instances < 1 or (max_queue_delay_us or 0) < 0:
        raise UserError(f"need max_batch_size >= 1, instances >= 1, max_queue_delay_us >= 0; got "
                        f"{max_batch_size}, {instances}, {max_queue_delay_us}")
    if queue.max_queue_size < 0 or queue.timeout_us < 0 or not 0 <= warmup_batch_size <= max_batch_size:
        raise UserError(f"need --max-queue-size >= 0, --queue-timeout-us >= 0 and 0 <= --warmup-batch-size <= "
                        f"max_batch_size={max_batch_size}; got {queue.max_queue_size}, {queue.timeout_us}, "
                        f"{warmup_batch_size}")
    if kind not in KINDS:
        raise UserError(f"unknown instance kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if plan is not None and kind != "KIND_GPU":
        raise UserError("a TensorRT plan runs on a GPU only; use --kind KIND_GPU (or serve the ONNX model on CPU)")
    if gpus and kind != "KIND_GPU":
        raise UserError("--gpus applies to --kind KIND_GPU only")
    if any(g < 0 for g in gpus):
        raise UserError(f"--gpus must be GPU indices >= 0, got {list(gpus)}")
    preferred = list(preferred_batch_sizes or [])
    if preferred and (min(preferred) < 1 or max(preferred) > max_batch_size):
        raise UserError(f"preferred batch sizes {preferred} must lie in [1, max_batch_size={max_batch_size}]")
    proto = load_onnx_proto(onnx_path)
    meta = metadata_from_proto(proto, source=str(onnx_path))
    if not batch_dim_is_dynamic(proto):
        raise UserError(f"{onnx_path} has a static batch axis; re-export it without --static-batch for Triton")
    del proto
    if plan is not None and not Path(plan).is_file():
        raise UserError(f"TensorRT plan not found: {plan}")

    # The fingerprint a gallery is tied to is the ONNX file's sha256, for a TensorRT plan too (as the
    # TensorRT embedder does): a gallery indexed with the ONNX model is valid with either served model.
    parameters = {key: str(value) for key, value in meta.items()}
    parameters["fingerprint"] = file_sha256(Path(onnx_path))
    model_dir = Path(out) / name
    backend, source, filename = ("tensorrt", Path(plan), "model.plan") if plan is not None else \
        ("onnxruntime", Path(onnx_path), "model.onnx")
    atomic_copy(source, model_dir / "1" / filename)
    text = config_pbtxt(name=name, backend=backend, max_batch_size=max_batch_size, height=meta["height"],
                        width=meta["width"], dim=meta["descriptor_dim"], instances=instances, kind=kind,
                        parameters=parameters, preferred_batch_sizes=preferred, max_queue_delay_us=max_queue_delay_us,
                        queue=queue, gpus=gpus, warmup_batch_size=warmup_batch_size)
    atomic_write_bytes(model_dir / "config.pbtxt", text.encode("utf-8"))
    if plan is not None:
        logger.info("Triton loads the plan only if its optimization profile's max batch is >= %d "
                    "(python -m export tensorrt --max-batch %d)", max_batch_size, max_batch_size)
    logger.info("wrote Triton model %s (%s, %dx%d -> %d)", model_dir, backend, meta["height"], meta["width"],
                meta["descriptor_dim"])
    return model_dir


def _sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export triton", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--onnx", type=Path, required=True, help="model from `python -m export onnx` (gives the dims)")
    parser.add_argument("--plan", type=Path, help="serve this TensorRT engine instead of the ONNX model")
    parser.add_argument("--out", type=Path, required=True, help="model repository root")
    parser.add_argument("--name", default="xmreid", help="model name")
    parser.add_argument("--max-batch-size", type=int, default=64, help="largest batch Triton forms")
    parser.add_argument("--instances", type=int, default=1, help="instances per device")
    parser.add_argument("--kind", default="KIND_GPU", choices=KINDS, help="where instances run")
    parser.add_argument("--gpus", type=_sizes, default=[], help="GPU indices for the instances, comma-separated "
                                                                "(empty: every visible GPU)")
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="longest Triton holds a request to grow a batch (unset: Triton's 0)")
    parser.add_argument("--preferred-batch-sizes", type=_sizes, default=None,
                        help="batch sizes Triton aims for, comma-separated (unset: any)")
    parser.add_argument("--max-queue-size", type=int, default=0,
                        help="requests Triton queues before rejecting more (0: unbounded)")
    parser.add_argument("--queue-timeout-us", type=int, default=0,
                        help="a request queued longer is rejected (0: no timeout)")
    parser.add_argument("--warmup-batch-size", type=int, default=1,
                        help="batch size of the zero-batch warmup at load (0: none)")
    args = parser.parse_args(argv)
    model_dir = write_repository(args.onnx, args.out, plan=args.plan, name=args.name,
                                 max_batch_size=args.max_batch_size, instances=args.instances, kind=args.kind,
                                 max_queue_delay_us=args.max_queue_delay_us,
                                 preferred_batch_sizes=args.preferred_batch_sizes,
                                 queue=QueuePolicy(args.max_queue_size, args.queue_timeout_us), gpus=args.gpus,
                                 warmup_batch_size=args.warmup_batch_size)
    print(f"wrote {model_dir / 'config.pbtxt'}")
    return 0
