"""``python -m export quantize``: an fp32 ONNX model to a static INT8 (QDQ) model, calibrated on real crops.

ONNX Runtime's ``quant_pre_process`` and ``quantize_static`` do the work; this module picks the settings
(MinMax, U8S8, per-channel weights, ``reduce_range``, 256 crops; ``--target tensorrt``: symmetric S8S8), feeds
calibration crops of both modalities (:mod:`export.calibration`) and keeps the artifact contract (uint8 NCHW in,
float32 ``[B, K*256]`` out, the metadata), adding ``precision=int8``, ``parent_fingerprint`` (the fp32 file's
sha256, so a gallery can tell "same model, other precision" from "other model") and ``quantization`` (the
settings as JSON). Why these settings: ``benchmarks/results/int8_notes.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from export.artifact import INPUT_NAME, OUTPUT_NAME, file_sha256, load_onnx_proto, metadata_from_proto
from export.calibration import (
    DEFAULT_NUM_IMAGES,
    MIN_CALIBRATION_IMAGES,
    SPLITS,
    CalibrationReader,
    select_calibration_images,
)
from xmreid.atomic import atomic_write_bytes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TYPES",
    "METHODS",
    "TARGETS",
    "TYPES",
    "is_quantized",
    "main",
    "quantization_settings",
    "quantize_onnx",
]

METHODS = ("minmax", "entropy", "percentile")
#: activations / weights: S8S8, U8S8, U8U8 (ONNX Runtime cannot run S8 activations with U8 weights).
TYPES = ("s8s8", "u8s8", "u8u8")
TARGETS = ("cpu", "tensorrt")
DEFAULT_METHOD = "minmax"
DEFAULT_TYPES = "u8s8"
DEFAULT_PERCENTILE = 99.999
PRECISION_INT8 = "int8"
# Calibration runs the augmented model (every activation an output) on this many batches at a time and
# folds them into the ranges / histograms, which bounds its memory (ORT's CalibStridedMinMax).
_CHUNK_BATCHES = 4


def is_quantized(meta: dict[str, Any]) -> bool:
    """Whether export metadata describes a model written by this command."""
    return meta.get("precision") == PRECISION_INT8


def quantization_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The ``quantization`` metadata of a quantized model as a dict (empty for an fp32 model)."""
    try:
        return dict(json.loads(meta.get("quantization", "{}")))
    except (TypeError, ValueError):
        return {}


def _types(types: str, target: str) -> tuple[Any, Any]:
    from onnxruntime.quantization import QuantType

    if types not in TYPES:
        raise UserError(f"unknown --types {types!r}; valid types: {', '.join(TYPES)}")
    if target == "tensorrt" and types != "s8s8":
        raise UserError(f"--target tensorrt needs --types s8s8 (TensorRT runs symmetric int8 only), got {types}")
    by_char = {"s": QuantType.QInt8, "u": QuantType.QUInt8}
    return by_char[types[0]], by_char[types[2]]


def _calibration_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    names = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if method not in names:
        raise UserError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")
    return names[method]


def _chunk(batches: int) -> int:
    """The largest divisor of ``batches`` that is <= the chunk size (ORT needs the stride to divide it)."""
    return max(d for d in range(1, min(_CHUNK_BATCHES, batches) + 1) if batches % d == 0)


def _check_contract(proto: Any, meta: dict[str, Any], source: str) -> None:
    """The quantized graph must keep the artifact's interface (a bug otherwise, hence RuntimeError)."""
    import onnx

    (inp,), (out,) = proto.graph.input, proto.graph.output
    in_dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
    ok = (inp.name == INPUT_NAME and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
          and out.name == OUTPUT_NAME and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
          and in_dims[1:] == [3, meta["height"], meta["width"]] and out_dims[1:] == [meta["descriptor_dim"]])
    if not ok:
        raise RuntimeError(f"{source}: the quantized graph breaks the ONNX contract: {inp.name} "
                           f"{inp.type.tensor_type.elem_type} {in_dims} -> {out.name} {out.type.tensor_type.elem_type} "
                           f"{out_dims}")


def quantize_onnx(onnx_path: str | Path, calibration_images: str | Path, out: str | Path, *,
                  num_images: int = DEFAULT_NUM_IMAGES, method: str = DEFAULT_METHOD,
                  percentile: float = DEFAULT_PERCENTILE, types: str | None = None, per_channel: bool = True,
                  reduce_range: bool | None = None, target: str = "cpu", pre_process: bool = True, split: str = "train",
                  seed: int = 0, batch_size: int = 8) -> Path:
    """Quantize an exported model to INT8 with ONNX Runtime static quantization (QDQ).

    Args:
        onnx_path: an fp32 model written by ``python -m export onnx``.
        calibration_images: a SYSU-MM01-layout tree or a folder of crops (see :mod:`export.calibration`).
        out: the ``.onnx`` file to write (atomically).
        num_images: calibration crops, at least :data:`export.calibration.MIN_CALIBRATION_IMAGES`.
        method: ``minmax``, ``entropy`` or ``percentile``.
        percentile: with ``percentile``: the share of values kept inside the range.
        types: activation and weight types, ``s8s8``, ``u8s8`` or ``u8u8``; default ``u8s8`` for the CPU and
            ``s8s8`` for TensorRT.
        per_channel: one weight scale per output channel (per tensor when False).
        reduce_range: 7-bit weights (ONNX Runtime's remedy for U8S8 saturation on x86 CPUs without VNNI);
            default on for the CPU target, off for TensorRT.
        target: ``cpu`` (ONNX Runtime) or ``tensorrt`` (symmetric S8S8 for explicit quantization).
        pre_process: run ``quant_pre_process`` (ORT graph optimisation and shape inference) first.
        split: for a SYSU-MM01 tree, the identities to calibrate on: ``train``, ``test`` or ``all``.
        seed: seed of the calibration pick.
        batch_size: images per calibration run.

    Returns:
        ``out`` as a Path.

    Raises:
        UserError: not an xmreid ONNX model, already quantized, a bad option, or an unusable calibration folder.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, out = Path(onnx_path), Path(out)
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}; valid targets: {', '.join(TARGETS)}")
    types = types or ("s8s8" if target == "tensorrt" else DEFAULT_TYPES)
    if reduce_range is None:
        reduce_range = target == "cpu"
    if reduce_range and target == "tensorrt":
        raise UserError("--reduce-range is for x86 CPUs without VNNI; TensorRT runs full 8-bit weights, so drop it")
    activation_type, weight_type = _types(types, target)
    calibrate_method = _calibration_method(method)
    if not 0 < percentile <= 100:
        raise UserError(f"--percentile must be in (0, 100], got {percentile}")
    proto = load_onnx_proto(onnx_path)
    meta = metadata_from_proto(proto, source=str(onnx_path))
    if is_quantized(meta):
        parent = meta.get("parent_fingerprint", "?")[:12]
        raise UserError(f"{onnx_path} is already an INT8 model (quantized from {parent}); quantize the fp32 model "
                        "it came from")
    del proto
    calibration = select_calibration_images(calibration_images, num_images, split=split, seed=seed)
    reader = CalibrationReader(calibration.files, meta["height"], meta["width"], batch_size=batch_size)
    extra: dict[str, Any] = {"CalibStridedMinMax": _chunk(len(reader)), "CalibPercentile": percentile}
    if target == "tensorrt":
        # TensorRT's explicit quantization takes symmetric int8 only (zero point 0) and keeps biases in float;
        # it wants one Q/DQ pair per consumer and none on Conv outputs, since it fuses Conv + ReLU (+ Add)
        # before re-quantizing (NVIDIA's Q/DQ placement advice, echoed in ORT's qdq_quantizer.py comments).
        extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False, DedicatedQDQPair=True,
                     OpTypesToExcludeOutputQuantization=["Conv"])
    with tempfile.TemporaryDirectory(prefix="xmreid-quant-") as tmp:
        source = onnx_path
        if pre_process:
            source = Path(tmp) / "pre.onnx"
            quant_pre_process(str(onnx_path), str(source), skip_symbolic_shape=True)
        quantized = Path(tmp) / "int8.onnx"
        logger.info("calibrating %s with %s on %d crops (%s), %s, per-channel=%s, reduce-range=%s", onnx_path.name,
                    method, len(calibration.files), calibration.source, types, per_channel, reduce_range)
        # ORT's calibrators print progress lines to stdout; keep the CLI's stdout for its own result lines.
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            quantize_static(str(source), str(quantized), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=activation_type,
                            weight_type=weight_type, calibrate_method=calibrate_method, extra_options=extra)
        logger.debug("onnxruntime.quantization output:\n%s", captured.getvalue())
        import onnx

        proto = onnx.load(str(quantized))
    settings = {
        "tool": "onnxruntime.quantization.quantize_static", "onnxruntime": importlib_metadata.version("onnxruntime"),
        "format": "QDQ", "method": method, "types": types, "per_channel": per_channel, "reduce_range": reduce_range,
        "target": target, "pre_process": pre_process, "calibration_images": len(calibration.files),
        "calibration_modalities": calibration.modalities, "calibration_source": calibration.source, "seed": seed,
        **({"percentile": percentile} if method == "percentile" else {}),
    }
    new_meta = {key: str(value) for key, value in meta.items()}
    new_meta.update(precision=PRECISION_INT8, parent_fingerprint=file_sha256(onnx_path),
                    quantization=json.dumps(settings, sort_keys=True, separators=(",", ":")))
    del proto.metadata_props[:]
    for key, value in new_meta.items():
        proto.metadata_props.add(key=key, value=value)
    parent = new_meta["parent_fingerprint"][:12]
    proto.doc_string = f"INT8 (QDQ) of {onnx_path.name} (sha256 {parent}): {proto.doc_string}"
    import onnx

    onnx.checker.check_model(proto)
    _check_contract(proto, meta, str(out))
    atomic_write_bytes(out, proto.SerializeToString())
    logger.info("wrote %s (%.1f MB, %d QuantizeLinear nodes)", out, out.stat().st_size / 1e6,
                sum(n.op_type == "QuantizeLinear" for n in proto.graph.node))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export quantize", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="fp32 model from `python -m export onnx`")
    parser.add_argument("--calibration-images", type=Path, required=True,
                        help="SYSU-MM01-layout tree or folder of RGB and infrared crops (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="the INT8 .onnx file to write")
    parser.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                        help=f"calibration crops (default {DEFAULT_NUM_IMAGES}, at least {MIN_CALIBRATION_IMAGES})")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                        help=f"calibration method (default {DEFAULT_METHOD})")
    parser.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE,
                        help=f"with --method percentile (default {DEFAULT_PERCENTILE})")
    parser.add_argument("--types", default=None, choices=TYPES,
                        help=f"activation/weight int8 types (default {DEFAULT_TYPES}; s8s8 with --target tensorrt)")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    parser.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                        help="7-bit weights, exact on x86 CPUs without VNNI (default: on for cpu, off for tensorrt)")
    parser.add_argument("--target", default="cpu", choices=TARGETS,
                        help="cpu (ONNX Runtime) or tensorrt (symmetric S8S8, for `export tensorrt --int8`)")
    parser.add_argument("--split", default="train", choices=SPLITS, help="SYSU-MM01 tree: identities to use")
    parser.add_argument("--no-pre-process", action="store_true", help="skip ORT's quant_pre_process")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration pick")
    args = parser.parse_args(argv)
    try:
        path = quantize_onnx(args.onnx, args.calibration_images, args.out, num_images=args.num_images,
                             method=args.method, percentile=args.percentile, types=args.types,
                             per_channel=not args.per_tensor, reduce_range=args.reduce_range, target=args.target,
                             pre_process=not args.no_pre_process, split=args.split, seed=args.seed)
    except UserError as exc:  # bad input is exit code 2, as for argparse's own errors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
