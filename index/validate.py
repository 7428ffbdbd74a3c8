"""Checks on what callers hand the gallery, done before anything changes.

Every check raises :class:`~index.errors.GalleryError` naming the expected value, never ``assert``
(stripped by ``python -O``).
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import CorruptGalleryError, GalleryError
from index.rows import to_timestamp

# Below this norm a vector has no direction; normalising it would produce NaN/inf.
_MIN_NORM = 1e-12
# Cosines of float32 unit vectors are within ~1e-6 of [-1, 1] (fp16 storage: ~1e-3); further out, the
# vectors are not what was stored.
SCORE_SLACK = 1e-3


def unit_rows(vectors: Any, min_norm: float = _MIN_NORM) -> np.ndarray:
    """Rows of ``vectors`` scaled to unit L2 norm, float32; rows shorter than ``min_norm`` become zero.

    The one L2 normalisation of the project (docs/contracts.md): the gallery (:func:`normalized`, which
    refuses such rows instead), track fusion and re-ranking in ``serving.runtime.ranking``, and training's
    evaluation (``training.features.l2_normalize``) all use it, so a zero vector means the same everywhere:
    no direction, never NaN.
    """
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norms >= min_norm, x / np.where(norms >= min_norm, norms, 1.0), 0.0).astype(np.float32)


def normalized(vectors: Any, dim: int, what: str, allow_1d: bool = False) -> np.ndarray:
    """A float32 C-contiguous L2-normalised copy of ``vectors`` (``[N, dim]``).

    This is the one place descriptors are normalised in the serving path (docs/contracts.md):
    models and engines emit raw descriptors; the gallery normalises on add and on search, so the
    inner product it computes is the cosine similarity.

    Args:
        vectors: array-like ``[N, dim]`` (or ``[dim]`` when ``allow_1d``), any real dtype.
        dim: the gallery's descriptor size.
        what: how to name the argument in errors.
        allow_1d: accept a single vector and treat it as ``[1, dim]``.
    """
    arr = np.asarray(vectors)
    if arr.dtype.kind not in "fiu":
        raise GalleryError(f"{what} must be a real-valued array, got dtype {arr.dtype}")
    if arr.ndim == 1 and allow_1d:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise GalleryError(f"{what} must have shape [N, {dim}], got {list(arr.shape)}")
    out = np.array(arr, dtype=np.float32, order="C", copy=True)  # never normalise the caller's array in place
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise GalleryError(f"{what} has NaN or infinite values in row(s) {bad[:10].tolist()}")
    zero = np.flatnonzero(np.linalg.norm(out, axis=1) < _MIN_NORM)
    if zero.size:
        raise GalleryError(f"{what} has all-zero row(s) {zero[:10].tolist()}: a zero vector has no direction")
    return np.ascontiguousarray(unit_rows(out))


def as_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """A 1-D int64 array from an int or an iterable of ints."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size and arr.dtype.kind not in "iu":
        raise GalleryError(f"{what} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64).ravel()


def as_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise GalleryError(f"k must be a positive int, got {k!r}")
    return int(k)


def as_cameras(cameras: Any) -> np.ndarray | None:
    """``None`` (all cameras), one camera id, or an iterable of camera ids -> sorted unique int64."""
    if cameras is None:
        return None
    items: Iterable[Any] = [cameras] if isinstance(cameras, numbers.Number) else cameras
    try:
        items = list(items)
    except TypeError:
        raise GalleryError(f"cameras must be None, an int or a list of ints, got {cameras!r}") from None
    for cam in items:
        if isinstance(cam, bool) or not isinstance(cam, numbers.Integral):
            raise GalleryError(f"cameras must be None, an int or a list of ints, got {cameras!r}")
    return np.unique(np.asarray(items, dtype=np.int64))


def as_time_range(time_range: Any) -> tuple[float | None, float | None] | None:
    """``None`` or ``(start, end)``, each ``None`` (open), Unix seconds, datetime or ISO-8601 string."""
    if time_range is None:
        return None
    if isinstance(time_range, (str, bytes)) or not isinstance(time_range, (tuple, list)) or len(time_range) != 2:
        raise GalleryError(f"time_range must be a (start, end) pair, got {time_range!r}")
    lo = to_timestamp(time_range[0], "time_range start")
    hi = to_timestamp(time_range[1], "time_range end")
    if lo is not None and hi is not None and lo > hi:
        raise GalleryError(f"time_range start {time_range[0]!r} is after its end {time_range[1]!r}")
    return lo, hi


def check_scores(scores: np.ndarray, ids: np.ndarray, *, clip: bool,
                 where: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The last guard before scores leave the gallery: finite, and cosines within [-1, 1].

    Args:
        scores: ``[Q, k]`` search scores (``-inf`` where ``ids`` is ``-1``).
        ids: ``[Q, k]`` ids.
        clip: the kind's scores are estimates from compressed codes (IVF-PQ): clip them to [-1, 1]
            instead of treating a small overshoot as damage.
        where: the gallery (named in the error).

    Returns:
        ``(scores, ids)``, the scores clipped where allowed.

    Raises:
        CorruptGalleryError: a hit's score is NaN or infinite, or (not ``clip``) outside [-1, 1] by more
            than :data:`SCORE_SLACK`: the vectors in memory are damaged, and the answer would be garbage.
    """
    hit = ids >= 0
    finite = np.isfinite(scores)
    bad = hit & ~finite
    if not clip:
        bad |= hit & finite & (np.abs(scores) > 1.0 + SCORE_SLACK)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise CorruptGalleryError(where, f"a search scored id {int(ids[row, col])} at {float(scores[row, col])!r}; "
                                         f"cosine scores lie in [-1, 1], so the vectors in memory are damaged")
    if clip and hit.any():
        scores = np.where(hit, np.clip(scores, -1.0, 1.0), scores).astype(np.float32)
    return scores, ids
