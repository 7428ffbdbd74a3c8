"""Data and reference helpers for the index tests (plain functions, imported by the test files)."""

from __future__ import annotations

import numpy as np


def clustered(n: int, dim: int, per_cluster: int = 20, spread: float = 0.7, seed: int = 0,
              n_queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random descriptors around random centres (several "images" per "identity"), plus queries
    drawn around the same centres. Uniform random data has no neighbourhood structure, so
    approximate indexes would be measured on a problem nobody has."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // per_cluster), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    q = centres[rng.integers(0, len(centres), n_queries)] + spread * rng.standard_normal((n_queries, dim)).astype(np.float32)
    return x.astype(np.float32), q.astype(np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(x: np.ndarray, q: np.ndarray, k: int, ids: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Reference cosine top-k in float64: (scores [Q, min(k, n)], ids)."""
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    scores = normalise(q) @ normalise(x).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k ids present in the found top-k."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0]) & set(t)) / k for f, t in zip(found, truth)]))


def meta(cameras: np.ndarray, **extra_fields) -> list[dict]:
    return [{"camera": int(c), **{k: v[i] for k, v in extra_fields.items()}} for i, c in enumerate(cameras)]
