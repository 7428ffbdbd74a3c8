"""How much a lower-precision engine changes retrieval, not just descriptors.

A cosine of 0.999 per descriptor says little about rankings; the SYSU-MM01 protocol on the synthetic
test split (all-search, single-shot, seeded gallery draws) does. Every backend embeds the very same
decoded images once and every combination is scored on the very same gallery draws, so differences are
the engines' alone. A *combination* names the backend that embedded the gallery and the one that
embedded the queries: ``("fp32", "int8")`` is a gallery indexed with the fp32 model searched with INT8
queries, the upgrade path of a running system.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["Embed", "SysuTestSet", "embed_all", "load_sysu_test", "rank1_change", "retrieval_table"]

#: uint8 ``[B, 3, H, W]`` -> float32 ``[B, D]``.
Embed = Callable[[np.ndarray], np.ndarray]
METRICS = ("r1", "mAP", "mINP")


def embed_all(embed: Embed, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Descriptors of ``images`` in batches of ``batch_size``."""
    return np.concatenate([embed(images[lo:lo + batch_size]) for lo in range(0, len(images), batch_size)])


@dataclass
class SysuTestSet:
    """The test split of a SYSU-MM01 tree under the all-search single-shot protocol, decoded once.

    Attributes:
        queries: infrared query records (cameras 3, 6).
        pool: RGB gallery-pool records (cameras 1, 2, 4, 5).
        images: uint8 ``[Q + P, 3, H, W]``: the queries first, then the pool.
        galleries: one index array into ``pool`` per trial.
    """

    queries: list[Any]
    pool: list[Any]
    images: np.ndarray
    galleries: list[np.ndarray]

    @property
    def modalities(self) -> np.ndarray:
        """``"ir"`` / ``"rgb"`` for each row of :attr:`images`."""
        return np.array([r.modality for r in self.queries] + [r.modality for r in self.pool])


def load_sysu_test(data_root: str | Path, height: int, width: int, *, trials: int = 10,
                   seed: int = 0) -> SysuTestSet:
    """Decode a SYSU-MM01 tree's test split and draw its all-search single-shot galleries.

    Raises:
        UserError: the folder is not a SYSU-MM01 tree or has no test queries / gallery images.
    """
    from training.data import build_dataset
    from training.data.images import read_image
    from training.protocols import split_sysu, sysu_galleries

    test = build_dataset("sysu", data_root).test
    queries, pool = split_sysu(test, "all")
    if not queries or not pool:
        raise UserError(f"{data_root} has no SYSU-MM01 test queries or gallery images")
    images = np.stack([read_image(r.path, height, width) for r in list(queries) + list(pool)])
    return SysuTestSet(list(queries), list(pool), np.ascontiguousarray(images.transpose(0, 3, 1, 2)),
                       sysu_galleries(pool, "all", "single", trials, seed))


def retrieval_table(features: Mapping[str, np.ndarray], test: SysuTestSet,
                    combinations: Mapping[str, tuple[str, str]]) -> dict[str, dict[str, float]]:
    """R1 / mAP / mINP (fractions, mean over the trials) of each gallery/query combination.

    Args:
        features: backend name -> descriptors of ``test.images`` (rows in the same order).
        test: the decoded test split and its gallery draws.
        combinations: row name -> ``(gallery backend, query backend)``.

    Returns:
        row name -> ``{"gallery", "query", "r1", "mAP", "mINP"}``.
    """
    from training.protocols import evaluate_sysu_features

    n_q = len(test.queries)
    table = {}
    for name, (gallery, query) in combinations.items():
        metrics = evaluate_sysu_features(features[query][:n_q], test.queries, features[gallery][n_q:], test.pool,
                                         test.galleries).metrics
        table[name] = {"gallery": gallery, "query": query, **{k: float(metrics[k]) for k in METRICS}}
        logger.info("%s (gallery %s, queries %s): R1 %.4f mAP %.4f mINP %.4f", name, gallery, query,
                    metrics["r1"], metrics["mAP"], metrics["mINP"])
    return table


def rank1_change(reference: Embed, candidate: Embed, data_root: str | Path, height: int, width: int, *,
                 batch_size: int = 8, trials: int = 10, seed: int = 0) -> dict[str, Any]:
    """SYSU-MM01 all-search single-shot rank-1 / mAP / mINP of two backends on one dataset's test split.

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
        ``{"reference": {"r1", "mAP", "mINP"}, "candidate": {...}, "rank1_change": candidate - reference,
        "queries", "gallery_pool", "trials"}`` with fractions in [0, 1].

    Raises:
        UserError: the folder is not a SYSU-MM01 tree.
    """
    test = load_sysu_test(data_root, height, width, trials=trials, seed=seed)
    features = {name: embed_all(embed, test.images, batch_size)
                for name, embed in (("reference", reference), ("candidate", candidate))}
    table = retrieval_table(features, test, {"reference": ("reference", "reference"),
                                             "candidate": ("candidate", "candidate")})
    result: dict[str, Any] = {"queries": len(test.queries), "gallery_pool": len(test.pool), "trials": trials}
    for name in ("reference", "candidate"):
        result[name] = {k: table[name][k] for k in METRICS}
    result["rank1_change"] = result["candidate"]["r1"] - result["reference"]["r1"]
    return result
