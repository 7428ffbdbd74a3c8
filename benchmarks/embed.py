"""Embedding benchmark: images/s and ms/image for PyTorch eager, ONNX Runtime and TensorRT, side by side.

``python -m benchmarks.embed [--quick] [--models paper,demo] [--checkpoint CKPT] [--threads N]
[--calibration-images DIR] [--no-int8]``

Models: ``paper`` is the paper's DFE (ResNet-50, 384x128, 6 parts; random weights time exactly like
trained ones) and ``demo`` the demo model of ``configs/synthetic.yaml`` (random weights unless
``--checkpoint`` gives a trained one). Each is exported to ONNX once by ``export.onnx_export``.

Backends (:mod:`benchmarks._embed_backends`), all timed host-to-host on the very same image batch:
``pytorch-eager-cpu``; ``onnxruntime-cpu`` with the server embedder's ``SessionOptions`` and the same thread
count; ``onnxruntime-int8-cpu``, the same model quantized by ``export.quantize`` with the command's defaults and
calibrated on real crops (``--calibration-images``, default ``data/synthetic_sysu``, else a small synthetic tree
written for the run); on a CUDA machine also ``pytorch-eager-cuda``, ``onnxruntime-cuda`` and ``tensorrt-fp16``,
with batch 64 added.

Fairness (after LitServe's parity tests: baseline in the same run, on the same machine): backends are
interleaved round by round, so a burst of load from other processes hits all of them alike. Each round's
batch latency is one sample; ms/image is latency / batch size. Every row also carries the cosine of its
descriptors against fp32 ONNX Runtime on real held-out crops (random images are outside the calibration
distribution, so they would misstate INT8), and the operator breakdown (:mod:`benchmarks._embed_profile`)
says where the time goes. The owner's targets (:mod:`benchmarks._embed_report`) are reported as met or
not, never asserted; what limits the ratios is written up in ``benchmarks/results/embed_limits.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from benchmarks import _machine
from benchmarks._embed_backends import BASELINE, FP32_ORT, Backend, cpu_backends, gpu_backends, measure
from benchmarks._embed_profile import gflop_per_image, int8_gemm_saturates, op_breakdown
from benchmarks._embed_report import INT8_TARGET_BATCH, INT8_TARGETS, TARGETS, plot, report
from export.artifact import read_metadata
from export.models import load_model
from export.onnx_export import export_model, quiet_exporter_logs
from export.parity import compare, random_images
from export.quantize import quantization_settings, quantize_onnx
from training.paper import PAPER
from xmreid.errors import UserError

log = logging.getLogger(__name__)

DEMO_CONFIG = _machine.REPO / "configs" / "synthetic.yaml"
DEFAULT_CALIBRATION = _machine.REPO / "data" / "synthetic_sysu"
ACCURACY_IMAGES = 64


def model_specs(names: list[str], checkpoint: Path | None) -> dict[str, dict[str, Any]]:
    """Keyword arguments of :func:`export.models.load_model` for each requested model name."""
    specs: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == "paper":
            specs[name] = {"checkpoint": None, **PAPER._asdict()}
        elif name == "demo" and checkpoint is not None:
            specs[name] = {"checkpoint": checkpoint}
        elif name == "demo":
            if not DEMO_CONFIG.is_file():
                raise UserError(f"{DEMO_CONFIG} not found (it defines the demo model); use --models paper "
                                "or --checkpoint")
            cfg = yaml.safe_load(DEMO_CONFIG.read_text()) or {}
            # The YAML sets what differs from the paper; its other keys fall back to the paper's model.
            specs[name] = {"checkpoint": None, "arch": str(cfg.get("arch", PAPER.arch)),
                           **{key: int(cfg.get(key, getattr(PAPER, key))) for key in ("height", "width", "parts",
                                                                                        "embed_dim")}}
        else:
            raise UserError(f"unknown model {name!r}; valid models: paper, demo")
    return specs


def calibration_root(args: argparse.Namespace, workdir: Path) -> Path:
    """``--calibration-images``, else the repository's synthetic tree, else a small one written for this run."""
    if args.calibration_images is not None:
        return args.calibration_images
    if DEFAULT_CALIBRATION.is_dir():
        return DEFAULT_CALIBRATION
    from training.data.synthetic import generate

    log.warning("%s not found; writing a small synthetic SYSU tree for INT8 calibration", DEFAULT_CALIBRATION)
    return generate(workdir / "calibration", ids=20, images_per_camera=4, show_progress=False)


def accuracy_images(root: Path, height: int, width: int) -> np.ndarray:
    """Up to :data:`ACCURACY_IMAGES` held-out crops of both modalities (a SYSU tree's test split)."""
    from export.calibration import CalibrationReader, select_calibration_images

    picks = select_calibration_images(root, ACCURACY_IMAGES, split="test", minimum=1)
    return CalibrationReader(picks.files, height, width).images


def cosine_columns(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """``cos_min`` / ``cos_p1`` / ``cos_median`` of the rows of two ``[N, D]`` descriptor arrays."""
    from export.int8_verify import cosine_stats

    stats = cosine_stats(reference, candidate)
    return {"cos_min": stats["min"], "cos_p1": stats["p1"], "cos_median": stats["median"]}


def _accuracy(backends: list[Backend], root: Path, height: int, width: int) -> dict[str, dict[str, float]]:
    """Cosine columns of every backend against fp32 ONNX Runtime on real held-out crops (batch-independent)."""
    images = accuracy_images(root, height, width)
    reference = next(b for b in backends if b.name == FP32_ORT)

    def run(backend: Backend) -> np.ndarray:
        step = min(backend.max_batch or 32, 32)
        return np.concatenate([backend.run(images[i:i + step]) for i in range(0, len(images), step)])

    ref = run(reference)
    return {b.key: {**cosine_columns(ref, run(b)), "accuracy_images": len(images)} for b in backends}


def batch_sizes(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """All batch sizes of a model's run, and those for GPU backends only (64 on a CUDA machine, unless --quick)."""
    gpu_sizes = [64] if torch.cuda.is_available() and not args.quick else []
    return sorted(set(args.batch_sizes + gpu_sizes)), gpu_sizes


def bench_model(name: str, spec: dict[str, Any], args: argparse.Namespace, workdir: Path,
                progress: Any) -> dict[str, Any]:
    """One model: export, quantize, build the backends, then every batch size timed interleaved, with parity,
    accuracy and the operator breakdown."""
    checkpoint = spec.pop("checkpoint")
    loaded = load_model(checkpoint, **spec, seed=0)
    model = loaded.model
    onnx_path = export_model(loaded, workdir / f"{name}.onnx")
    info: dict[str, Any] = {"model": name, "source": loaded.source, "arch": model.arch, "height": model.height,
                            "width": model.width, "descriptor_dim": model.descriptor_dim,
                            "gflop_per_image": gflop_per_image(model)}
    int8_path = None
    if args.int8:
        start = time.perf_counter()
        int8_path = quantize_onnx(onnx_path, args.calibration_root, workdir / f"{name}.int8.onnx",
                                  num_images=args.calibration_num_images)
        info["int8_quantize_s"] = time.perf_counter() - start
        info["int8_quantization"] = quantization_settings(read_metadata(int8_path))
    sizes, gpu_sizes = batch_sizes(args)
    cpu = [b for threads in args.threads for b in cpu_backends(loaded, onnx_path, threads, info, int8_path)]
    gpu = gpu_backends(loaded, onnx_path, max(sizes), info)
    accuracy = _accuracy(cpu + gpu, args.calibration_root, model.height, model.width)
    rows, parity = [], {}
    for size in sizes:
        images = random_images(size, model.height, model.width, seed=size)
        backends = [b for b in gpu if b.max_batch is None or size <= b.max_batch]
        if size not in gpu_sizes:  # batch 64 is for GPUs only (minutes per call on a small CPU)
            backends = cpu + backends
        reference = backends[0].run(images)
        parity[size] = {b.key: compare(reference, b.run(images))["min_cosine"] for b in backends[1:]}
        samples = measure(backends, images, warmup=args.warmup, max_rounds=args.rounds, budget_s=args.budget_s)
        speed = {b.key: size * len(samples[b.key]) / sum(samples[b.key]) for b in backends}
        for backend in backends:
            stats = _machine.summarize(samples[backend.key])
            row = {"model": name, "backend": backend.name, "threads": backend.threads, "batch": size,
                   "images_per_s": speed[backend.key],
                   "ms_per_image_p50": stats["p50_ms"] / size, "ms_per_image_p95": stats["p95_ms"] / size,
                   "ms_per_batch_p50": stats["p50_ms"], "rounds": stats["n"],
                   "gflop_per_s": speed[backend.key] * info["gflop_per_image"], **accuracy.get(backend.key, {})}
            # Against PyTorch eager with the same CPU threads (GPU backends: against the most-threaded one).
            threads = backend.threads or max(args.threads)
            base = f"{BASELINE}/{threads}t"
            if base in speed:
                row["speedup_vs_pytorch_eager_cpu"] = speed[backend.key] / speed[base]
            if f"{FP32_ORT}/{threads}t" in speed:
                row["speedup_vs_onnxruntime_cpu"] = speed[backend.key] / speed[f"{FP32_ORT}/{threads}t"]
            rows.append(row)
        progress.update(1)
        log.info("%s batch %d done", name, size)
    profile_batch = max([s for s in args.batch_sizes if s <= INT8_TARGET_BATCH] or [1])
    breakdown = op_breakdown(loaded, onnx_path, random_images(profile_batch, model.height, model.width),
                             min(args.threads), workdir, int8_path=int8_path)
    return {"info": info, "rows": rows, "parity_min_cosine": parity,
            "op_breakdown": {"batch": profile_batch, "threads": min(args.threads), **breakdown}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; exits with argparse's usage message on a mistake."""
    parser = _machine.benchmark_parser("embed", __doc__)
    parser.add_argument("--models", default="paper,demo", help="comma-separated: paper, demo")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint for the demo model")
    parser.add_argument("--batch-sizes", default="1,8,32", help="CPU batch sizes (64 is added on a GPU)")
    parser.add_argument("--threads", default=str(os.cpu_count() or 1),
                        help="CPU thread counts, comma-separated (default: all cores); each is its own backend pair")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per backend and batch size")
    parser.add_argument("--rounds", type=int, default=30, help="most timed rounds per batch size")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="time budget per batch size for the slowest backend (at least 3 rounds run)")
    parser.add_argument("--quick", action="store_true",
                        help="batch 1 and 8, shorter budget, 64 calibration crops: a few-minute check")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 (quantized) backend")
    parser.add_argument("--calibration-images", type=Path, default=None,
                        help=f"INT8 calibration crops (default {DEFAULT_CALIBRATION.relative_to(_machine.REPO)}, "
                             "else a small synthetic tree)")
    parser.add_argument("--calibration-num-images", type=int, default=256, help="INT8 calibration crops (256)")
    _machine.add_output_args(parser, "embed")
    args = parser.parse_args(argv)
    try:
        args.batch_sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
        args.threads = [int(s) for s in args.threads.split(",") if s.strip()]
    except ValueError:
        parser.error("--batch-sizes and --threads must be comma-separated integers")
    if not args.batch_sizes or not args.threads or min(args.batch_sizes + args.threads) < 1:
        parser.error("--batch-sizes and --threads must be positive")
    if args.quick:
        args.batch_sizes = [s for s in args.batch_sizes if s <= 8] or [1]
        args.budget_s, args.rounds, args.warmup = min(args.budget_s, 15.0), min(args.rounds, 10), 1
        args.calibration_num_images = min(args.calibration_num_images, 64)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested model benchmarked in one temporary folder; returns the JSON-able results.

    Raises:
        UserError: an unknown model, a missing demo config, or a model ONNX Runtime cannot load.
    """
    from tqdm import tqdm

    results: dict[str, Any] = {"threads": args.threads, "batch_sizes": args.batch_sizes, "targets": TARGETS,
                               "int8_targets": INT8_TARGETS, "models": {}}
    if args.int8:
        results["int8_gemm"] = int8_gemm_saturates()
    specs = model_specs(args.models, args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="embed-bench-") as tmp, \
            tqdm(total=len(batch_sizes(args)[0]) * len(specs), desc="embed benchmark", unit="batch size",
                 disable=args.no_progress) as bar:
        args.calibration_root = calibration_root(args, Path(tmp))
        for name, spec in specs.items():
            results["models"][name] = bench_model(name, spec, args, Path(tmp), bar)
    results["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``benchmarks/results/<name>.{json,md,png}``; 1 on a user mistake."""
    args = parse_args(argv)
    quiet_exporter_logs()
    return _machine.run_and_write(args, run, report, plot)


if __name__ == "__main__":
    raise SystemExit(main())
