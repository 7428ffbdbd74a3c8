"""``python -m export tensorrt``: an ONNX model to a TensorRT engine, then verified against ONNX Runtime.

Written against the TensorRT 11 Python API (the ``tensorrt-cu12-bindings`` 11.4 pin; TensorRT's libraries
come from NVIDIA's index; NVIDIA's "Migrating from TensorRT 10.x to 11.x" and "Removed Python APIs and
Replacements" pages) and still working on 10.x: ``Builder`` -> network filled by the ``OnnxParser`` ->
``BuilderConfig`` (workspace memory-pool limit, a timing cache) with one optimization profile over the batch
axis of ``images`` (min / opt / max) -> ``build_serialized_network`` -> written atomically, with the sidecar.

Precision:

* fp32: the TF32 flag (on by default) is cleared so the engine is a faithful fp32 reference
  (cosine >= 0.9999 against ONNX Runtime); ``--tf32`` keeps it.
* fp16: TensorRT 11 networks are always strongly typed and ``BuilderFlag.FP16`` is gone, so the
  fp32 ONNX is converted to an fp16 graph first (:mod:`export.fp16`; uint8 in, float32 out) and
  built as is. On TensorRT 10 the same graph is built with the ``STRONGLY_TYPED`` creation flag;
  only a TensorRT without that flag falls back to the old ``BuilderFlag.FP16``. Descriptors drift
  more than fp32 (threshold 0.999 by default), so ``--data-root`` also reports the rank-1 change on
  a synthetic SYSU-MM01 test split, which is what a user of the ranking cares about.
* int8 (``--int8``): TensorRT 11 also removed ``BuilderFlag.INT8`` and the calibrators (implicit
  quantization), so an INT8 engine is built from a QDQ graph, *explicit quantization*: the model
  ``python -m export quantize --target tensorrt`` writes (symmetric int8, zero points 0, which is all
  TensorRT accepts), parsed as is into a strongly typed network. On TensorRT 10 the ``STRONGLY_TYPED``
  creation flag does the same; a 10.x without it gets ``BuilderFlag.INT8`` so the Q/DQ layers are honoured.
  The engine is checked against ONNX Runtime running the same QDQ model (the same quantized arithmetic,
  threshold 0.99), and with ``--reference`` (the fp32 parent) and ``--data-root`` the rank-1 / mAP change
  is measured against fp32, the cost a user of the ranking pays. The INT8 path is unit-tested without a GPU
  only (docs/gpu.md lists what has run on GPU hardware).

The timing cache (``--timing-cache``, default ``<out>.timing``) stores the kernel timings of a build;
the next build on the same GPU and TensorRT version reuses them and takes seconds instead of minutes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.artifact import INPUT_NAME, SIDECAR_FORMAT, read_metadata, sidecar_path, write_sidecar
from export.artifact import tensorrt_unavailable_reason as artifact_unavailable_reason
from xmreid.atomic import atomic_write_bytes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["FP16_MIN_COSINE", "FP32_MIN_COSINE", "INT8_MIN_COSINE", "SIDECAR_FORMAT", "build_engine",
           "check_int8_model", "main", "precision_plan", "sidecar_path", "tensorrt_unavailable_reason", "verify_engine",
           "write_sidecar"]

# Pass thresholds per precision, the one copy (export verify and benchmarks/gpu_check read them here):
# fp32 differs from its reference only by rounding (~1e-6 relative), so below 0.9999 the graph is wrong.
FP32_MIN_COSINE = 0.9999
FP16_MIN_COSINE = 0.999
# Against ONNX Runtime running the same QDQ graph: the same quantized arithmetic, but TensorRT fuses and
# rounds in its own order, so the bar is looser (set from that reasoning; no GPU measurement yet).
INT8_MIN_COSINE = 0.99
_INSTALL_HINT = "the ONNX model still runs with ONNX Runtime"


def _torch_device_count() -> int:
    """CUDA devices as torch sees them (the build environment has torch; serving's has not)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def tensorrt_unavailable_reason() -> str | None:
    """One sentence saying why TensorRT cannot build here, or ``None`` when it can.

    The checks are the artifact contract's (:func:`export.artifact.tensorrt_unavailable_reason`); building
    needs no cuda-python, so this asks without the runtime check and says what that means for the user.
    """
    reason = artifact_unavailable_reason(runtime=False, device_count=_torch_device_count)
    if reason is None:
        return None
    return f"{reason}, so no engine was built; {_INSTALL_HINT}."


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def precision_plan(trt: Any, fp16: bool, tf32: bool, int8: bool = False) -> dict[str, Any]:
    """How this TensorRT builds the requested precision (pure; unit-tested with fake modules).

    Args:
        trt: the ``tensorrt`` module (or a stand-in exposing its enums and version).
        fp16: an fp16 engine (from an fp16 graph where strong typing exists).
        tf32: keep TF32 kernels for fp32 layers.
        int8: an INT8 engine from a QDQ graph (explicit quantization); excludes ``fp16``.

    Returns:
        ``{"precision", "fp16_graph", "network_flags", "builder_flags_set", "builder_flags_clear"}``:
        whether to convert the ONNX to fp16 first, the creation flags, and the builder flags to set
        and clear (names of ``trt.BuilderFlag``).

    Raises:
        UserError: both ``fp16`` and ``int8``.
    """
    if fp16 and int8:
        raise UserError("--fp16 and --int8 are exclusive: an INT8 engine runs the precisions its QDQ graph declares")
    major = _major(trt)
    creation = trt.NetworkDefinitionCreationFlag
    has_strong = hasattr(creation, "STRONGLY_TYPED")
    precision = "int8" if int8 else "fp16" if fp16 else ("tf32" if tf32 else "fp32")
    plan: dict[str, Any] = {"precision": precision, "fp16_graph": False,
                            "network_flags": 0, "builder_flags_set": [], "builder_flags_clear": []}
    if (fp16 or int8) and (major >= 11 or has_strong):
        plan["fp16_graph"] = fp16  # strong typing: the precision lives in the graph (fp16 weights, or Q/DQ)
        if major < 11:  # on 11 the flag is accepted but ignored (always strongly typed)
            plan["network_flags"] |= 1 << int(creation.STRONGLY_TYPED)
    elif fp16:
        plan["builder_flags_set"].append("FP16")  # TensorRT 10 without strong typing: the weak-typing flag
    elif int8:
        plan["builder_flags_set"].append("INT8")  # weakly typed 10.x: Q/DQ layers are only honoured with it
    if not fp16 and not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        plan["builder_flags_clear"].append("TF32")
    return plan


def check_int8_model(onnx_path: str | Path) -> dict[str, Any]:
    """Refuse, before a minutes-long build, an ONNX model TensorRT cannot build as INT8.

    TensorRT's explicit quantization needs Q/DQ nodes and takes symmetric int8 only: every
    QuantizeLinear / DequantizeLinear zero point must be 0 (NVIDIA's "Working with Quantized Types").

    Returns:
        The model's metadata.

    Raises:
        UserError: no Q/DQ nodes (an fp32 model), or an asymmetric quantization (the CPU default).
    """
    import numpy as np
    from onnx import numpy_helper

    from export.artifact import load_onnx_proto, metadata_from_proto

    proto = load_onnx_proto(onnx_path)
    meta = metadata_from_proto(proto, source=str(onnx_path))
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        raise UserError(f"--int8 needs a QDQ model, and {onnx_path} has no QuantizeLinear/DequantizeLinear nodes; "
                        "write one with `python -m export quantize --target tensorrt`")
    initializers = {t.name: t for t in proto.graph.initializer}
    nonzero = [n.name for n in qdq if len(n.input) > 2 and n.input[2] in initializers
               and np.any(numpy_helper.to_array(initializers[n.input[2]]) != 0)]
    if nonzero:
        raise UserError(f"{onnx_path} is quantized asymmetrically ({len(nonzero)} Q/DQ nodes with a non-zero zero "
                        "point) and TensorRT takes symmetric int8 only; re-quantize it with "
                        "`python -m export quantize --target tensorrt`")
    return meta


def _check_batches(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UserError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min={min_batch} opt={opt_batch} "
                        f"max={max_batch}")


def build_engine(onnx_path: str | Path, out: str | Path, *, fp16: bool = False, min_batch: int = 1,
                 opt_batch: int = 8, max_batch: int = 32, workspace_gb: float = 2.0, tf32: bool = False,
                 timing_cache: str | Path | None = None, int8: bool = False) -> Path:
    """Build and serialize a TensorRT engine for the ONNX model.

    Args:
        onnx_path: a model from ``python -m export onnx`` (dynamic batch axis, metadata).
        out: the ``.plan`` file to write (atomically).
        fp16: allow FP16 kernels.
        min_batch: smallest batch the engine accepts.
        opt_batch: the batch TensorRT tunes its kernels for.
        max_batch: largest batch the engine accepts.
        workspace_gb: scratch GPU memory TensorRT may use per layer while building and running.
        tf32: keep TensorRT's default TF32 kernels in an fp32 build (faster on Ampere+, less exact).
        timing_cache: file of kernel timings to reuse and update (default ``<out>.timing``).
        int8: build the QDQ model's INT8 engine (explicit quantization; see :func:`check_int8_model`).

    Returns:
        ``out`` as a Path; its sidecar ``<out>.json`` (:func:`write_sidecar`) is written beside it.

    Raises:
        UserError: bad batch range or workspace, a model without the export metadata, or a graph the
            TensorRT ONNX parser rejects.
        RuntimeError: TensorRT failed to build (its log says why).
    """
    import tensorrt as trt

    _check_batches(min_batch, opt_batch, max_batch)
    if workspace_gb <= 0:
        raise UserError(f"--workspace-gb must be > 0, got {workspace_gb}")
    meta = check_int8_model(onnx_path) if int8 else read_metadata(onnx_path)
    plan = precision_plan(trt, fp16, tf32, int8)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(plan["network_flags"])
    parser = trt.OnnxParser(network, trt_logger)
    if plan["fp16_graph"]:
        from export.fp16 import to_fp16

        ok = parser.parse(to_fp16(onnx_path).SerializeToString())
    else:
        ok = parser.parse_from_file(str(onnx_path))
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UserError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    for name in plan["builder_flags_set"]:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan["builder_flags_clear"]:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    cache_path = Path(timing_cache) if timing_cache is not None else Path(str(out) + ".timing")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    shape = (3, meta["height"], meta["width"])
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_batch, *shape), (opt_batch, *shape), (max_batch, *shape))
    config.add_optimization_profile(profile)
    graph = ", fp16 graph, strongly typed" if plan["fp16_graph"] else ", QDQ graph" if int8 else ""
    logger.info("building TensorRT %s engine (%s%s, batch %d/%d/%d, workspace %.1f GiB, timing cache %s); "
                "this takes minutes without a cache", trt.__version__, plan["precision"], graph, min_batch, opt_batch,
                max_batch, workspace_gb, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT could not build the engine; its log above says why")
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    path = atomic_write_bytes(out, bytes(serialized))
    write_sidecar(path, onnx_path, precision=plan["precision"], min_batch=min_batch,
                  opt_batch=opt_batch, max_batch=max_batch, tensorrt_version=trt.__version__)
    logger.info("wrote %s (%.1f MB) and %s", path, path.stat().st_size / 1e6, sidecar_path(path).name)
    return path


def _verify_batch_sizes(runner: Any) -> list[int]:
    """The profile's corners plus an odd size in between (odd sizes catch padding bugs)."""
    sizes = {runner.min_batch, runner.opt_batch, runner.max_batch, min(max(3, runner.min_batch), runner.max_batch)}
    return sorted(sizes)


def verify_engine(plan: str | Path, onnx_path: str | Path, *, fp16: bool, batch_sizes: Sequence[int] | None = None,
                  images_dir: str | Path | None = None, data_root: str | Path | None = None,
                  min_cosine: float | None = None, seed: int = 0, int8: bool = False,
                  reference_onnx: str | Path | None = None) -> dict[str, Any]:
    """Compare the engine with ONNX Runtime (CPU, fp32) on the same images.

    Args:
        plan: the engine.
        onnx_path: the ONNX model it was built from (the reference).
        fp16: whether it is an fp16 build (picks the default threshold).
        batch_sizes: sizes to test; default: the profile's min / opt / max and 3.
        images_dir: real crops to test besides random images.
        data_root: a SYSU-MM01-layout tree: also report the rank-1 change (ORT vs engine).
        min_cosine: pass threshold; default 0.99 for int8, 0.999 for fp16, 0.9999 for fp32.
        seed: seed of the random images.
        int8: whether it is an INT8 build (picks the default threshold).
        reference_onnx: the model the retrieval check compares with (default ``onnx_path``); for an INT8
            engine, the fp32 parent, so the rank-1 change is the whole cost of INT8.

    Returns:
        ``{"plan", "onnx", "precision", "min_cosine_required", "rows", "min_cosine", "max_abs_diff", "passed"}``
        plus ``"retrieval"`` (see :func:`export.retrieval_check.rank1_change`) when ``data_root`` is given.
    """
    from export.ort import create_session
    from export.parity import compare, image_batch, random_images
    from export.tensorrt_runtime import TensorRTRunner

    default = INT8_MIN_COSINE if int8 else FP16_MIN_COSINE if fp16 else FP32_MIN_COSINE
    threshold = min_cosine if min_cosine is not None else default
    meta = read_metadata(onnx_path)
    runner = TensorRTRunner(plan)
    if (runner.height, runner.width, runner.dim) != (meta["height"], meta["width"], meta["descriptor_dim"]):
        raise UserError(f"{plan} takes {runner.height}x{runner.width} -> {runner.dim}, but {onnx_path} takes "
                        f"{meta['height']}x{meta['width']} -> {meta['descriptor_dim']}")
    session = create_session(onnx_path, "cpu")

    def reference(images):
        return session.run(None, {INPUT_NAME: images})[0]

    sizes = list(batch_sizes) if batch_sizes else _verify_batch_sizes(runner)
    sources = {"random": random_images(max(sizes), meta["height"], meta["width"], seed)}
    if images_dir is not None:
        sources["images"] = image_batch(images_dir, max(sizes), meta["height"], meta["width"])
    rows = []
    for source, images in sources.items():
        for size in sizes:
            batch = images[:size]
            row = {"source": source, "batch_size": size, **compare(reference(batch), runner(batch))}
            row["passed"] = row["min_cosine"] >= threshold
            rows.append(row)
    report: dict[str, Any] = {
        "plan": str(plan), "onnx": str(onnx_path), "precision": "int8" if int8 else "fp16" if fp16 else "fp32",
        "min_cosine_required": threshold, "rows": rows,
        "min_cosine": min(r["min_cosine"] for r in rows), "max_abs_diff": max(r["max_abs_diff"] for r in rows),
        "passed": all(r["passed"] for r in rows),
    }
    if data_root is not None:
        from export.retrieval_check import rank1_change

        retrieval_reference = reference
        if reference_onnx is not None:
            parent = create_session(reference_onnx, "cpu")
            retrieval_reference = lambda images: parent.run(None, {INPUT_NAME: images})[0]  # noqa: E731
        report["retrieval"] = rank1_change(retrieval_reference, runner, data_root, meta["height"], meta["width"],
                                           batch_size=runner.opt_batch)
        report["retrieval"]["reference_onnx"] = str(reference_onnx or onnx_path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export tensorrt", description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="model from `python -m export onnx`")
    parser.add_argument("--out", type=Path, required=True, help="the engine file to write (model.plan)")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    precision.add_argument("--int8", action="store_true",
                           help="INT8 engine from a QDQ model (`python -m export quantize --target tensorrt`)")
    parser.add_argument("--tf32", action="store_true", help="fp32 build: keep TensorRT's TF32 kernels")
    parser.add_argument("--min-batch", type=int, default=1)
    parser.add_argument("--opt-batch", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--workspace-gb", type=float, default=2.0, help="builder workspace limit (default 2)")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="kernel-timing cache to reuse and update (default: <out>.timing)")
    parser.add_argument("--images", type=Path, help="real crops to verify on besides random images")
    parser.add_argument("--data-root", type=Path, help="SYSU-layout tree: also report the rank-1 change")
    parser.add_argument("--reference", type=Path,
                        help="with --int8 --data-root: the fp32 parent ONNX the rank-1 change is measured against")
    parser.add_argument("--min-cosine", type=float, help="pass threshold (default 0.99 int8, 0.999 fp16, 0.9999 fp32)")
    parser.add_argument("--skip-verify", action="store_true", help="build only")
    parser.add_argument("--json", type=Path, help="also write the verification report as JSON here")
    args = parser.parse_args(argv)
    if args.reference is not None and not args.int8:
        parser.error("--reference is for --int8 engines (the fp32 parent of the QDQ model)")
    if args.int8:
        check_int8_model(args.onnx)  # a wrong model is refused before TensorRT is even looked for
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    _check_batches(args.min_batch, args.opt_batch, args.max_batch)
    plan = build_engine(args.onnx, args.out, fp16=args.fp16, min_batch=args.min_batch, opt_batch=args.opt_batch,
                        max_batch=args.max_batch, workspace_gb=args.workspace_gb, tf32=args.tf32,
                        timing_cache=args.timing_cache, int8=args.int8)
    print(f"wrote {plan} and {sidecar_path(plan)}")
    if args.skip_verify:
        return 0
    from export.parity import format_rows

    report = verify_engine(plan, args.onnx, fp16=args.fp16, images_dir=args.images, data_root=args.data_root,
                           min_cosine=args.min_cosine, int8=args.int8, reference_onnx=args.reference)
    reference = "the same QDQ model" if args.int8 else "fp32"
    print(format_rows(report["rows"], f"ONNX Runtime CPU ({reference}) vs TensorRT {report['precision']} ({plan})"))
    if "retrieval" in report:
        ret = report["retrieval"]
        print(f"rank-1 on {args.data_root}: ONNX Runtime ({ret['reference_onnx']}) {ret['reference']['r1']:.4f}, "
              f"TensorRT "
              f"{ret['candidate']['r1']:.4f} (change {ret['rank1_change']:+.4f}); mAP {ret['reference']['mAP']:.4f} "
              f"-> {ret['candidate']['mAP']:.4f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        print(f"FAILED: min cosine {report['min_cosine']:.6f} < {report['min_cosine_required']}")
        return 1
    print(f"passed: min cosine {report['min_cosine']:.6f} >= {report['min_cosine_required']}")
    return 0
