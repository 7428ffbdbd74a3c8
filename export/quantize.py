"""``python -m export quantize``: an fp32 ONNX model to a static INT8 (QDQ) model, calibrated on real crops.

ONNX Runtime's own tools do the work (``onnxruntime.quantization``: ``quant_pre_process``, then
``quantize_static`` in the QDQ format with per-channel weights); this module chooses the settings,
feeds calibration crops of both modalities (:mod:`export.calibration`) and keeps the artifact
contract: uint8 NCHW ``images`` in, float32 ``descriptors [B, K*256]`` out, the export metadata
carried over, plus

* ``precision = int8``;
* ``parent_fingerprint``: the sha256 of the fp32 ONNX file it came from (the fp32 model's fingerprint),
  which is what a gallery compatibility rule needs to tell "same model, other precision" from "other
  model";
* ``quantization``: the settings as JSON (method, types, per-channel, reduce-range, images, ONNX Runtime
  version).

The quantized model's own fingerprint is the sha256 of its file, like any ONNX model's.

Settings, measured on the trained demo model (``runs/exp/e1_ca/last.pt``: ResNet-18, 96x32, 6 x 256),
calibrated on crops of the synthetic SYSU tree's *train* identities and scored on its *test* identities
(``python -m export verify``: 1440 crops for the cosine; all-search single-shot, 10 draws, 480 infrared
queries; fp32 R1 18.94 / mAP 26.18 / mINP 20.14). Changes are INT8 - fp32 in points; every run used
U8S8, per-channel weights and 256 crops unless said, the method and type comparisons without
reduce_range and the calibration-size sweep with it; ONNX Runtime 1.32, 2 cores shared with a training job.

* **Calibration method: MinMax.** Per-image cosine min / p1 / median and R1 / mAP / mINP change:

  ==================  =======  =======  =======  =====  =====  =====
  method              min      p1       median   R1     mAP    mINP
  ==================  =======  =======  =======  =====  =====  =====
  MinMax              0.99844  0.99888  0.99939  +0.02  +0.01  +0.01
  Entropy             0.99678  0.99888  0.99943  -0.17  -0.11  -0.06
  Percentile 99.999   0.99338  0.99865  0.99946  -0.08  -0.11  -0.05
  Percentile 99.99    0.89739  0.96216  0.99951  -0.44  -0.56  -0.55
  ==================  =======  =======  =======  =====  =====  =====

  The clipping methods buy a slightly better median and pay in the tail: the rare large activations they
  clip are real (the descriptor is a BatchNorm output, not a bounded activation), so the worst images
  lose most. MinMax keeps the whole observed range, has the best worst case, leaves retrieval unchanged
  and is the fastest to calibrate. ``--method entropy|percentile`` remain available.
* **Data types: U8S8** (uint8 activations, int8 weights). Accuracy is the same for all three formats
  (p1 0.99888 / 0.99888 / 0.99889, R1 / mAP within 0.2 points), speed is not: at batch 8 the INT8
  model ran at 3.8x fp32 with U8S8, 1.8x with U8U8 and 1.09x with S8S8, because ONNX Runtime fused only
  15 of the 26 S8S8 convolutions into ``QLinearConv`` and ran the rest as DequantizeLinear -> fp32 Conv ->
  QuantizeLinear (ORT's optimised graph). ONNX Runtime's ``quantize_static`` docstring also recommends
  U8S8 for x86.
* **reduce_range on by default** for the CPU target. x86 U8S8 kernels without VNNI use ``VPMADDUBSW``,
  whose 16-bit sum of two u8 x s8 products saturates (ORT's quantization docs, "When and why do I need
  to try U8U8?"); 7-bit weights keep every pair sum inside int16. Emulating that instruction on the
  INT8 demo model's real uint8 activations and int8 weights (32 test crops, MLAS's NHWC im2col order):
  without reduce_range 2.8% of the stem convolution's pair sums saturate (its input is the normalised
  image, spread over the whole uint8 range; 1e-3 over all convolutions, the later ones ~1e-8), with it
  none. This machine has VNNI (``MatMulInteger`` on 255 x 127 pairs returned the exact sum, 2072640,
  where saturation gives 1048544), so here the flag only costs precision: over 3 calibration seeds the
  mean p1 cosine 0.99881 -> 0.99861 and R1 change +0.01 -> -0.14 points, inside the seed-to-seed spread
  (+-0.3 R1). It is kept so one artifact is exact on every x86 CPU (``--no-reduce-range`` for a VNNI
  fleet).
* **Per-channel weights**: per-tensor lowers p1 to 0.99855 and was no faster.
* **Calibration size**: 256 crops by default, at least 32. Cosine min / p1 by number of crops (worst
  of 2 seeds at 8 and 16, of 3 at 32): 8: 0.9937 / 0.9964, 16: 0.9947 / 0.9971, 32: 0.9950 / 0.9975,
  64: 0.9957 / 0.9987, 128: 0.9980 / 0.9987, 256: 0.9983 / 0.9987, 512: 0.9983 / 0.9987, 1024:
  0.9978 / 0.9985; retrieval moved by at most 0.35 R1 and 0.2 mAP points at every size. Below 32 the
  worst images clip more; from 128 on nothing improves.
* **Pre-processing** (``quant_pre_process``: ORT graph optimisation + ONNX shape inference): the same
  numbers to the last digit with and without it on our export (the dynamo exporter already folds
  BatchNorm and writes shapes); it runs by default because ORT recommends it and it costs under a second.
* ``--target tensorrt``: TensorRT takes only symmetric int8 (zero point 0), so activations and weights
  are S8S8 and symmetric, biases stay float and Conv outputs carry no Q/DQ. On ONNX Runtime's CPU
  simulation of that graph: cosine min / p1 0.99545 / 0.99718, R1 / mAP / mINP -0.06 / +0.10 / +0.16.
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

from xmreid.atomic import atomic_write_bytes
from export.calibration import (DEFAULT_NUM_IMAGES, MIN_CALIBRATION_IMAGES, SPLITS, CalibrationReader,
                                select_calibration_images)
from export.artifact import INPUT_NAME, OUTPUT_NAME, file_sha256, load_onnx_proto, metadata_from_proto
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_METHOD", "DEFAULT_TYPES", "METHODS", "TARGETS", "TYPES", "is_quantized", "main",
           "quantize_onnx", "quantization_settings"]

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
