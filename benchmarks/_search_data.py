"""Descriptor sets for the search benchmark: Gaussian, clustered, and shaped like the trained model's.

Approximate search is only as good as the data's neighbourhood structure allows, so the benchmark
measures more than one kind of data and names which one each row used:

* ``gaussian``: i.i.d. N(0, 1) in every dimension, normalised. Uniform on the sphere: in 1536-d the
  cosine of two random items is N(0, 1/1536), the top-10 of a query differ from the 10,000th by a few
  hundredths, and no partition of the space keeps a query's true neighbours together. It is the
  worst case for any index, not what a gallery looks like.
* ``clustered``: N/10 random centres + unit noise per item (~10 crops per "identity"), the
  benchmark's historic data: full-rank noise as large as the centres.
* ``model``: the statistics of the trained model's own descriptors. The RGB crops of a synthetic
  SYSU-layout dataset are embedded with the ONNX model; per identity, the mean descriptor and the
  residuals of its crops give a between-identity and a within-identity covariance. New identities
  are drawn as ``mean + z @ B`` (``B``: the identity means, centred, / sqrt(ids - 1), so their
  covariance is the measured between-identity one) and each of their crops as ``centre + w @ W``
  (``W``: up to 1024 residual rows / sqrt(rows - 1): the measured within-identity covariance), with
  as many crops per identity as the real data has on average. Queries are fresh crops of gallery
  identities, drawn the same way. Limits, stated in the results: the between-identity spread has
  the rank of the number of training identities (~120 in the demo data, where a city has millions
  of people), and IR queries are not modelled (the queries are RGB-like crops).

Every generator fills a preallocated float32 array chunk by chunk, normalised in place, so 1M x 1536
(6.1 GB) needs one copy of the data, not three.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from index.validate import unit_rows

log = logging.getLogger(__name__)

KINDS = ("clustered", "gaussian", "model")
_CHUNK = 65_536
_RGB_CAMERAS = ("cam1", "cam2", "cam4", "cam5")  # SYSU-MM01: cameras 3 and 6 are infrared
_WITHIN_ROWS = 1024


@dataclass(frozen=True)
class ModelStats:
    """What the ``model`` generator draws from (see the module docstring)."""

    mean: np.ndarray          # [d]
    between: np.ndarray       # [ids, d]: centred identity means / sqrt(ids - 1)
    within: np.ndarray        # [rows, d]: residual rows / sqrt(rows - 1)
    crops_per_identity: float
    identities: int
    images: int
    source: str

    def describe(self) -> str:
        return (f"model-shaped: {self.images} RGB crops of {self.identities} identities embedded by {self.source}; "
                f"new identities ~ between-identity covariance (rank {len(self.between)}), "
                f"{self.crops_per_identity:.1f} crops each ~ within-identity covariance ({len(self.within)} rows)")


def _normalise_rows(x: np.ndarray) -> None:
    """``x`` normalised in place (a view of the big array) by the project's one L2 normalisation."""
    x[...] = unit_rows(x)


def gaussian(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """I.i.d. N(0, 1) items and queries, normalised."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        x[lo:lo + _CHUNK] = rng.standard_normal((min(_CHUNK, n - lo), dim), dtype=np.float32)
        _normalise_rows(x[lo:lo + _CHUNK])
    q = rng.standard_normal((n_queries, dim), dtype=np.float32)
    _normalise_rows(q)
    return x, q


def clustered(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """N/10 N(0, 1) centres, each item a centre + N(0, 1) noise; queries around the same centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 10), dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, _CHUNK):
        m = min(_CHUNK, n - lo)
        x[lo:lo + m] = centres[rng.integers(0, len(centres), m)]
        x[lo:lo + m] += rng.standard_normal((m, dim), dtype=np.float32)
        _normalise_rows(x[lo:lo + m])
    q = centres[rng.integers(0, len(centres), n_queries)] + rng.standard_normal((n_queries, dim), dtype=np.float32)
    _normalise_rows(q)
    return x, q


def fit_model_stats(model: str | Path, images: str | Path, batch: int = 64, seed: int = 0) -> ModelStats:
    """Embed the RGB crops under ``images`` (SYSU layout: ``camN/<person>/*.jpg``) and fit the generator.

    Raises:
        FileNotFoundError / ValueError: no model file, or fewer than two identities with two crops.
    """
    from serving.core.imageio import decode_image_file
    from serving.embedders import load_embedder

    embedder = load_embedder(model)
    by_person: dict[str, list[Path]] = defaultdict(list)
    for cam in _RGB_CAMERAS:
        for path in sorted(Path(images, cam).glob("*/*.jpg")):
            by_person[path.parent.name].append(path)
    paths = [(person, p) for person, ps in sorted(by_person.items()) if len(ps) >= 2 for p in ps]
    if len({person for person, _ in paths}) < 2:
        raise ValueError(f"{images} has fewer than two identities with two RGB crops (cam1/2/4/5/<person>/*.jpg)")
    descriptors = np.empty((len(paths), embedder.dim), dtype=np.float32)
    for lo in range(0, len(paths), batch):
        chunk = [decode_image_file(p, embedder.height, embedder.width) for _, p in paths[lo:lo + batch]]
        descriptors[lo:lo + len(chunk)] = embedder.embed(np.stack(chunk))
    people = np.array([person for person, _ in paths])
    names, inverse = np.unique(people, return_inverse=True)
    means = np.stack([descriptors[inverse == i].mean(axis=0) for i in range(len(names))])
    residuals = descriptors - means[inverse]
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(residuals), size=min(_WITHIN_ROWS, len(residuals)), replace=False)
    mean = means.mean(axis=0)
    return ModelStats(mean=mean.astype(np.float32),
                      between=((means - mean) / np.sqrt(len(names) - 1)).astype(np.float32),
                      within=(residuals[rows] / np.sqrt(len(rows) - 1)).astype(np.float32),
                      crops_per_identity=len(paths) / len(names), identities=len(names), images=len(paths),
                      source=Path(model).name)


def model_shaped(n: int, n_queries: int, seed: int, stats: ModelStats,
                 normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Items and queries drawn from ``stats`` (module docstring), normalised unless ``normalise=False``."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, round(n / stats.crops_per_identity))
    centres = stats.mean + rng.standard_normal((n_ids, len(stats.between)), dtype=np.float32) @ stats.between
    dim = len(stats.mean)
    x = np.empty((n, dim), dtype=np.float32)
    owner = np.sort(rng.integers(0, n_ids, n))  # crops of one identity are consecutive, as a camera adds them

    def crops(who: np.ndarray) -> np.ndarray:
        return centres[who] + rng.standard_normal((len(who), len(stats.within)), dtype=np.float32) @ stats.within

    for lo in range(0, n, _CHUNK):
        x[lo:lo + _CHUNK] = crops(owner[lo:lo + _CHUNK])
        if normalise:
            _normalise_rows(x[lo:lo + _CHUNK])
    q = crops(owner[rng.integers(0, n, n_queries)]).astype(np.float32)
    if normalise:
        _normalise_rows(q)
    return x, q
