"""The quantized case of ``python -m export verify``: an INT8 model against the fp32 model it came from.

INT8 is not expected to match fp32 to 1e-6, so the verdict is retrieval, the thing users see:

* per-image cosine of INT8 vs fp32 descriptors (min / p1 / median), per modality, on real crops;
* the SYSU-MM01 all-search single-shot protocol (10 gallery draws) on a labelled tree's test split, for
  fp32, INT8, and the two mixed deployments (an fp32 gallery searched with INT8 queries, the upgrade
  path, and the reverse), all on the same decoded images and the same draws;
* a failure when any INT8 row loses more than ``max_map_drop`` mAP points (default 1.0) against fp32,
  or more than ``max_r1_drop`` R1 points when that is set, or when the cosine p1 falls below
  ``min_cosine_p1`` when that is set.

The reference must be the parent: its sha256 must equal the INT8 model's ``parent_fingerprint``,
otherwise the comparison would measure two different models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import INPUT_NAME, file_sha256, read_metadata
from export.ort import create_session
from export.quantize import is_quantized, quantization_settings
from export.retrieval_check import embed_all, load_sysu_test, retrieval_table
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["COMBINATIONS", "MAX_MAP_DROP", "cosine_stats", "format_report", "verify_int8"]

#: mAP points INT8 may lose against fp32 before verify fails (the acceptance bar for an INT8 model).
MAX_MAP_DROP = 1.0
#: row name -> (gallery backend, query backend).
COMBINATIONS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "fp32"),
    "int8": ("int8", "int8"),
    "fp32_gallery_int8_query": ("fp32", "int8"),
    "int8_gallery_fp32_query": ("int8", "fp32"),
}


def cosine_stats(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Per-row cosine of two ``[N, D]`` descriptor arrays: ``n``, ``min``, ``p1``, ``median``, ``mean``."""
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    cos = (ref * cand).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1), 1e-30)
    return {"n": len(cos), "min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)), "mean": float(cos.mean())}


def _runner(path: Path, provider: str):
    session = create_session(path, provider)
    return lambda images: session.run(None, {INPUT_NAME: images})[0]


def verify_int8(onnx_path: str | Path, reference: str | Path, *, data_root: str | Path | None = None,
                images_dir: str | Path | None = None, num_images: int = 256, trials: int = 10, seed: int = 0,
                provider: str = "cpu", batch_size: int = 8, max_map_drop: float = MAX_MAP_DROP,
                max_r1_drop: float | None = None, min_cosine_p1: float | None = None) -> dict[str, Any]:
    """Compare an INT8 model with its fp32 parent on descriptors and on retrieval.

    Args:
        onnx_path: the INT8 model (``python -m export quantize``).
        reference: the fp32 model it was quantized from.
        data_root: a SYSU-MM01-layout tree: cosine on its test split and the retrieval table.
        images_dir: a folder of crops (searched recursively): cosine on up to ``num_images`` of them.
        num_images: with ``images_dir``.
        trials: gallery draws of the SYSU protocol (10 in the protocol).
        seed: seed of the first draw.
        provider: ONNX Runtime provider for both models.
        batch_size: images per call.
        max_map_drop: fail above this many mAP points lost by any INT8 row.
        max_r1_drop: fail above this many R1 points lost (not checked when None).
        min_cosine_p1: fail when the 1st-percentile cosine is below this (not checked when None).

    Returns:
        ``{"onnx", "reference", "quantization", "cosine": {source: stats}, "retrieval": {row: metrics},
        "drops": {row: {"r1", "mAP", "mINP"} in points}, "thresholds", "failures", "passed"}``.

    Raises:
        UserError: the model is not INT8, the reference is not its parent, or neither data source is given.
    """
    onnx_path, reference = Path(onnx_path), Path(reference)
    meta = read_metadata(onnx_path)
    if not is_quantized(meta):
        raise UserError(f"{onnx_path} is not an INT8 model from `python -m export quantize` (no precision=int8 "
                        "metadata)")
    if data_root is None and images_dir is None:
        raise UserError("verifying an INT8 model needs --data-root (a SYSU-MM01 tree) and/or --images (crops)")
    ref_meta = read_metadata(reference)
    if is_quantized(ref_meta):
        raise UserError(f"--reference {reference} is itself INT8; give the fp32 model it was quantized from")
    parent = meta.get("parent_fingerprint", "")
    if file_sha256(reference) != parent:
        raise UserError(f"--reference {reference} is not the model {onnx_path.name} was quantized from (its sha256 "
                        f"differs from parent_fingerprint {parent[:12]})")
    embed = {"fp32": _runner(reference, provider), "int8": _runner(onnx_path, provider)}
    height, width = meta["height"], meta["width"]
    report: dict[str, Any] = {"onnx": str(onnx_path), "reference": str(reference),
                              "quantization": quantization_settings(meta), "cosine": {}, "retrieval": {}, "drops": {},
                              "thresholds": {"max_map_drop": max_map_drop, "max_r1_drop": max_r1_drop,
                                             "min_cosine_p1": min_cosine_p1}}
    if data_root is not None:
        test = load_sysu_test(data_root, height, width, trials=trials, seed=seed)
        feats = {name: embed_all(fn, test.images, batch_size) for name, fn in embed.items()}
        modality = test.modalities
        report["cosine"]["test_split"] = cosine_stats(feats["fp32"], feats["int8"])
        for name, label in (("ir", "test_ir_queries"), ("rgb", "test_rgb_pool")):
            rows = modality == name
            if rows.any():
                report["cosine"][label] = cosine_stats(feats["fp32"][rows], feats["int8"][rows])
        report["retrieval"] = retrieval_table(feats, test, COMBINATIONS)
        report.update(queries=len(test.queries), gallery_pool=len(test.pool), trials=trials)
        base = report["retrieval"]["fp32"]
        for row, metrics in report["retrieval"].items():
            if row != "fp32":
                report["drops"][row] = {k: 100 * (base[k] - metrics[k]) for k in ("r1", "mAP", "mINP")}
    if images_dir is not None:
        from export.parity import image_batch

        images = image_batch(images_dir, num_images, height, width)
        report["cosine"]["images"] = cosine_stats(embed_all(embed["fp32"], images, batch_size),
                                                  embed_all(embed["int8"], images, batch_size))
    failures = []
    for row, drop in report["drops"].items():
        if drop["mAP"] > max_map_drop:
            failures.append(f"{row} loses {drop['mAP']:.2f} mAP points (> {max_map_drop})")
        if max_r1_drop is not None and drop["r1"] > max_r1_drop:
            failures.append(f"{row} loses {drop['r1']:.2f} R1 points (> {max_r1_drop})")
    if min_cosine_p1 is not None:
        for source, stats in report["cosine"].items():
            if stats["p1"] < min_cosine_p1:
                failures.append(f"cosine p1 on {source} is {stats['p1']:.4f} (< {min_cosine_p1})")
    report["failures"], report["passed"] = failures, not failures
    return report


def format_report(report: dict[str, Any]) -> str:
    """The CLI's tables: cosine per source, then the retrieval rows with their drops in points."""
    lines = [f"INT8 {report['onnx']} vs fp32 {report['reference']}",
             f"{'cosine per image':<22} {'n':>6} {'min':>8} {'p1':>8} {'median':>8}"]
    for source, s in report["cosine"].items():
        lines.append(f"{source:<22} {s['n']:>6} {s['min']:>8.5f} {s['p1']:>8.5f} {s['median']:>8.5f}")
    if report["retrieval"]:
        lines += ["", f"SYSU all-search single-shot, {report['trials']} draws, {report['queries']} infrared queries",
                  f"{'gallery / query':<26} {'R1':>7} {'mAP':>7} {'mINP':>7} {'dR1':>6} {'dmAP':>6} {'dmINP':>6}"]
        for row, m in report["retrieval"].items():
            drop = report["drops"].get(row)
            tail = "" if drop is None else f" {-drop['r1']:>+6.2f} {-drop['mAP']:>+6.2f} {-drop['mINP']:>+6.2f}"
            lines.append(f"{m['gallery'] + ' / ' + m['query']:<26} {100 * m['r1']:>7.2f} {100 * m['mAP']:>7.2f} "
                         f"{100 * m['mINP']:>7.2f}{tail}")
    return "\n".join(lines)
