"""``python -m export verify``: the same images through PyTorch and ONNX Runtime, compared.

An INT8 model (``python -m export quantize``; ``precision=int8`` in its metadata) is compared with its
fp32 parent instead (``--reference model.onnx``): descriptor cosine and SYSU retrieval metrics, with a
mAP-drop threshold (:mod:`export.int8_verify`).

Random uint8 images cover the whole input range; real crops (``--images``) cover the distribution the
model is used on. Each batch size is checked separately because a wrongly frozen batch axis or a
batch-dependent op only shows at sizes other than the export's example batch.

Tolerance: fp32 ONNX Runtime reorders reductions and folds BatchNorm into the convolution weights, so
outputs differ from PyTorch by float32 rounding (~1e-6 relative); a cosine below 0.9999 is far
outside that and means a different graph or different weights (ARCHITECTURE.md §8).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.artifact import INPUT_NAME, batch_dim_is_dynamic, load_onnx_proto, metadata_from_proto, read_metadata
from export.models import LoadedModel
from export.onnx_export import add_model_arguments, model_from_args
from export.ort import PROVIDER_CHOICES, create_session
from export.parity import compare, format_rows, image_batch, parse_batch_sizes, random_images
from export.quantize import is_quantized
from export.tensorrt_build import FP32_MIN_COSINE  # the one copy of the pass thresholds, beside fp16 and int8
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["FP32_MIN_COSINE", "check_compatible", "main", "torch_descriptors", "verify_onnx"]



def check_compatible(meta: dict[str, Any], model: Any, onnx_path: str | Path) -> None:
    """Refuse to compare a model with an ONNX file built for another input or descriptor size."""
    ours = {"height": model.height, "width": model.width, "descriptor_dim": model.descriptor_dim}
    theirs = {key: meta[key] for key in ours}
    if ours != theirs:
        raise UserError(f"{onnx_path} was exported for {theirs}, but the PyTorch model has {ours}")


def torch_descriptors(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """Eval-mode PyTorch descriptors of uint8 ``[B, 3, H, W]`` images, float32 ``[B, D]``."""
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(images))).float().numpy()


def verify_onnx(model: LoadedModel | torch.nn.Module, onnx_path: str | Path, *,
                batch_sizes: Sequence[int] = (1, 3, 8), images_dir: str | Path | None = None, seed: int = 0,
                provider: str = "cpu", min_cosine: float = FP32_MIN_COSINE) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime descriptors on random (and optionally real) images.

    Args:
        model: the PyTorch model the ONNX file should reproduce (a :class:`LoadedModel` or a DFE).
        onnx_path: the exported model.
        batch_sizes: each is run separately; all must be >= 1.
        images_dir: a folder of real crops (searched recursively) to test besides random images.
        seed: seed of the random images.
        provider: ONNX Runtime provider, ``cpu`` / ``cuda`` / ``auto``.
        min_cosine: a batch passes when every row's cosine similarity is at least this.

    Returns:
        ``{"onnx", "providers", "min_cosine_required", "rows": [{"source", "batch_size",
        "max_abs_diff", "max_abs_reference", "min_cosine", "mean_cosine", "passed"}], "min_cosine",
        "max_abs_diff", "passed"}``.

    Raises:
        UserError: unreadable ONNX file, size mismatch, or batch sizes a static-batch model cannot run.
    """
    net = model.model if isinstance(model, LoadedModel) else model
    net = net.eval().cpu()
    proto = load_onnx_proto(onnx_path)
    meta = metadata_from_proto(proto, source=str(onnx_path))
    check_compatible(meta, net, onnx_path)
    if not batch_dim_is_dynamic(proto) and set(batch_sizes) != {1}:
        raise UserError(f"{onnx_path} has a static batch axis; verify it with --batch-sizes 1")
    del proto  # the session reads the file itself
    session = create_session(onnx_path, provider)
    height, width, largest = meta["height"], meta["width"], max(batch_sizes)
    sources = {"random": random_images(largest, height, width, seed)}
    if images_dir is not None:
        sources["images"] = image_batch(images_dir, largest, height, width)
    rows = []
    for source, images in sources.items():
        for size in batch_sizes:
            batch = images[:size]
            reference = torch_descriptors(net, batch)
            (candidate,) = session.run(None, {INPUT_NAME: batch})
            row = {"source": source, "batch_size": size, **compare(reference, candidate)}
            row["passed"] = row["min_cosine"] >= min_cosine
            rows.append(row)
            logger.info("%s batch %d: max abs diff %.3e, min cosine %.8f", source, size, row["max_abs_diff"],
                        row["min_cosine"])
    return {
        "onnx": str(onnx_path),
        "providers": session.get_providers(),
        "min_cosine_required": min_cosine,
        "rows": rows,
        "min_cosine": min(row["min_cosine"] for row in rows),
        "max_abs_diff": max(row["max_abs_diff"] for row in rows),
        "passed": all(row["passed"] for row in rows),
    }


def _int8_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from export.int8_verify import format_report, verify_int8

    if args.reference is None:
        parser.error(f"{args.onnx} is an INT8 model: give --reference, the fp32 model it was quantized from")
    report = verify_int8(args.onnx, args.reference, data_root=args.data_root, images_dir=args.images,
                         trials=args.trials, provider=args.provider, max_map_drop=args.max_map_drop,
                         max_r1_drop=args.max_r1_drop, min_cosine_p1=args.min_cosine)
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        print("FAILED: " + "; ".join(report["failures"]))
        return 1
    drops = report["drops"]
    worst = max((d["mAP"] for d in drops.values()), default=0.0)
    print(f"passed: worst INT8 mAP drop {worst:.2f} points <= {args.max_map_drop}" if drops else
          "passed: cosine only (no --data-root, so no retrieval threshold was checked)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export verify", description=__doc__.splitlines()[0])
    add_model_arguments(parser, required=False)
    parser.add_argument("--onnx", type=Path, required=True, help="the exported (or quantized) model")
    parser.add_argument("--images", type=Path, help="folder of real crops to test besides random images")
    parser.add_argument("--batch-sizes", default="1,3,8", help="comma-separated (default 1,3,8)")
    parser.add_argument("--provider", default="auto", choices=PROVIDER_CHOICES, help="ONNX Runtime provider")
    parser.add_argument("--min-cosine", type=float, default=None,
                        help="pass threshold (default 0.9999; INT8: on the p1 cosine, unchecked by default)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    int8 = parser.add_argument_group("INT8 models (compared with their fp32 parent, no PyTorch model needed)")
    int8.add_argument("--reference", type=Path, help="the fp32 ONNX model the INT8 one was quantized from")
    int8.add_argument("--data-root", type=Path, help="SYSU-MM01-layout tree: cosine and R1/mAP/mINP on its test split")
    int8.add_argument("--trials", type=int, default=10, help="SYSU gallery draws (default 10)")
    int8.add_argument("--max-map-drop", type=float, default=1.0, help="fail above this many mAP points lost (1.0)")
    int8.add_argument("--max-r1-drop", type=float, default=None, help="fail above this many R1 points lost (unset)")
    args = parser.parse_args(argv)
    if is_quantized(read_metadata(args.onnx)):
        return _int8_main(args, parser)
    if args.checkpoint is None and not args.random:
        parser.error("one of the arguments --checkpoint --random is required (or an INT8 model with --reference)")
    min_cosine = FP32_MIN_COSINE if args.min_cosine is None else args.min_cosine
    report = verify_onnx(model_from_args(args), args.onnx, batch_sizes=parse_batch_sizes(args.batch_sizes),
                         images_dir=args.images, provider=args.provider, min_cosine=min_cosine)
    print(format_rows(report["rows"], f"PyTorch vs ONNX Runtime {report['providers'][0]} ({args.onnx})"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        print(f"FAILED: min cosine {report['min_cosine']:.8f} < {min_cosine}")
        return 1
    print(f"passed: min cosine {report['min_cosine']:.8f} >= {min_cosine}, "
          f"max abs diff {report['max_abs_diff']:.3e}")
    return 0
