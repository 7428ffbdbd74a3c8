"""How much a lower-precision engine changes retrieval, not just descriptors.

A cosine of 0.999 per descriptor says little about rankings; the SYSU-MM01 protocol on the synthetic
test split (all-search, single-shot, seeded gallery draws) does. Both backends embed the very same
decoded images and are scored on the very same gallery draws, so the difference is the engine's alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["Embed", "rank1_change"]

#: uint8 ``[B, 3, H, W]`` -> float32 ``[B, D]``.
Embed = Callable[[np.ndarray], np.ndarray]


def _embed_all(embed: Embed, images: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([embed(images[lo:lo + batch_size]) for lo in range(0, len(images), batch_size)])


def rank1_change(reference: Embed, candidate: Embed, data_root: str | Path, height: int, width: int, *,
                 batch_size: int = 8, trials: int = 10, seed: int = 0) -> dict[str, Any]:
    """SYSU-MM01 all-search single-shot rank-1 / mAP of two backends on one dataset's test split.

    Args:
        reference: the trusted backend (ONNX Runtime fp32).
        candidate: the backend under test (e.g. a TensorRT fp16 engine).
        data_root: a SYSU-MM01-layout tree (``python -m training synth --layout sysu``).
        height: model input height.
        width: model input width.
        batch_size: images per call; must be within the candidate's batch range.
        trials: gallery draws (10 in the protocol).
        seed: seed of the first draw.

    Returns:
        ``{"reference": {"r1", "mAP"}, "candidate": {"r1", "mAP"}, "rank1_change": candidate - reference,
        "queries", "gallery_pool"}`` with fractions in [0, 1].

    Raises:
        UserError: the folder is not a SYSU-MM01 tree.
    """
    from training.data import build_dataset
    from training.data.images import read_image
    from training.errors import UserError as TrainingUserError
    from training.protocols import evaluate_sysu_features, split_sysu, sysu_galleries

    try:
        test = build_dataset("sysu", data_root).test
    except TrainingUserError as exc:
        raise UserError(str(exc)) from exc
    queries, pool = split_sysu(test, "all")
    if not queries or not pool:
        raise UserError(f"{data_root} has no SYSU-MM01 test queries or gallery images")
    records = list(queries) + list(pool)
    images = np.stack([read_image(r.path, height, width) for r in records]).transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images)
    galleries = sysu_galleries(pool, "all", "single", trials, seed)
    result: dict[str, Any] = {"queries": len(queries), "gallery_pool": len(pool), "trials": trials}
    for name, embed in (("reference", reference), ("candidate", candidate)):
        feats = _embed_all(embed, images, batch_size)
        metrics = evaluate_sysu_features(feats[:len(queries)], queries, feats[len(queries):], pool, galleries).metrics
        result[name] = {"r1": float(metrics["r1"]), "mAP": float(metrics["mAP"])}
        logger.info("%s: rank-1 %.4f mAP %.4f", name, metrics["r1"], metrics["mAP"])
    result["rank1_change"] = result["candidate"]["r1"] - result["reference"]["r1"]
    return result
