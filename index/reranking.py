"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), written from the paper's equations.

Queries and gallery are pooled into one set of N = Q + G samples. For each sample p:

1. N(p, k): p and its k nearest neighbours (eq. 1).
2. R(p, k) = {g in N(p, k) : p in N(g, k)}, the k-reciprocal neighbours (eq. 4).
3. R*(p, k) = R(p, k) ∪ R(q, k/2) for every q in R(p, k) whose half-size set overlaps R(p, k) in at
   least 2/3 of its members (eq. 6): recovers true matches that the hard reciprocal test dropped.
4. V_p[g] = exp(-d(p, g)) for g in R*(p, k), 0 elsewhere (eq. 7), normalised to sum 1 as the authors'
   released implementation does, so that samples with many reciprocal neighbours do not dominate
   the expansion below.
5. Local query expansion: V_p ← mean of V_q over q in N(p, k2) (eq. 11).
6. Jaccard distance d_J(p, g) = 1 - Σ_j min(V_p[j], V_g[j]) / Σ_j max(V_p[j], V_g[j]) (eq. 10).
7. Final distance d* = (1 - λ) d_J + λ d (eq. 12).

Distances are first divided by each row's maximum so exp(-d) and λ·d are on the same [0, 1] scale
whatever the metric (cosine, Euclidean).
"""

from __future__ import annotations

import logging
import time

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["RERANK_PARAMS", "k_reciprocal_rerank", "rerank_neighbourhood"]

#: The paper's parameters (k1=20, k2=6, lambda=0.3), used by the evaluation and by the server's ``rerank``.
RERANK_PARAMS: dict[str, float] = {"k1": 20, "k2": 6, "lambda_value": 0.3}


def _check(name: str, a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or infinite distances")
    return a


def _nearest(dist: np.ndarray, m: int) -> np.ndarray:
    """``[N, m]`` indices of each row's m nearest samples, nearest first, the sample itself always first.

    Ties are broken by index. Only the m nearest are sorted (argpartition first), which is most of the
    speed-up over a full argsort on thousands of samples.
    """
    n = dist.shape[0]
    keyed = dist.copy()
    np.fill_diagonal(keyed, -1.0)  # p before a duplicate of p that also sits at distance 0
    m = min(m, n)
    cand = np.argpartition(keyed, m - 1, axis=1)[:, :m] if m < n else np.tile(np.arange(n), (n, 1))
    vals = np.take_along_axis(keyed, cand, axis=1)
    order = np.lexsort((cand, vals), axis=1)  # by distance, then by index
    return np.take_along_axis(cand, order, axis=1)


def _reciprocal_sets(rank: np.ndarray, k: int) -> list[np.ndarray]:
    """R(p, k) for every p: members of N(p, k) whose own N(., k) contains p (eq. 4)."""
    n = rank.shape[0]
    in_nn = np.zeros((n, n), dtype=bool)
    in_nn[np.arange(n)[:, None], rank[:, : k + 1]] = True  # N(p, k) includes p itself
    recip = in_nn & in_nn.T
    return [np.flatnonzero(row) for row in recip]


def k_reciprocal_rerank(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20,
                        k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Re-rank query → gallery distances with k-reciprocal encoding.

    Args:
        q_g_dist: ``[Q, G]`` query-gallery distances (smaller = more similar; e.g. cosine distance).
        q_q_dist: ``[Q, Q]`` query-query distances.
        g_g_dist: ``[G, G]`` gallery-gallery distances.
        k1: k of the k-reciprocal sets (20 in the paper); clipped to ``Q + G - 1``.
        k2: size of the local query expansion (6 in the paper); 1 disables it.
        lambda_value: weight of the original distance in the result (0.3 in the paper).

    Returns:
        ``[Q, G]`` float32 re-ranked distances (smaller = more similar).
    """
    q, g = np.shape(q_g_dist)
    q_g = _check("q_g_dist", q_g_dist, (q, g))
    q_q = _check("q_q_dist", q_q_dist, (q, q))
    g_g = _check("g_g_dist", g_g_dist, (g, g))
    if q == 0 or g == 0:
        raise ValueError(f"need at least one query and one gallery sample, got Q={q}, G={g}")
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    start = time.perf_counter()
    n = q + g
    k1 = min(k1, n - 1)
    k2 = min(k2, n)

    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)
    np.maximum(dist, 0.0, out=dist)  # cosine distances can be -1e-7 from round-off
    row_max = dist.max(axis=1, keepdims=True)
    dist /= np.where(row_max > 0, row_max, 1.0)

    rank = _nearest(dist, max(k1 + 1, k2))

    recip = _reciprocal_sets(rank, k1)
    recip_half = _reciprocal_sets(rank, (k1 + 1) // 2)  # k/2, rounded up so that k1=1 still has a neighbour

    v = np.zeros((n, n), dtype=np.float32)
    member = np.zeros(n, dtype=bool)
    for p in range(n):
        member[:] = False
        member[recip[p]] = True
        expanded = member.copy()
        for c in recip[p]:
            cand = recip_half[c]
            # eq. 6: keep R(c, k/2) when at least 2/3 of it is already in R(p, k)
            if 3 * np.count_nonzero(member[cand]) >= 2 * cand.size:
                expanded[cand] = True
        idx = np.flatnonzero(expanded)
        weights = np.exp(-dist[p, idx])
        v[p, idx] = weights / weights.sum()

    if k2 > 1:  # local query expansion over each sample's k2 nearest neighbours (itself included)
        v = np.stack([v[rank[p, :k2]].mean(axis=0) for p in range(n)])

    gallery_vt = np.ascontiguousarray(v[q:].T)  # [N, G]: the rows gathered below are then contiguous
    gallery_mass = gallery_vt.sum(axis=0)
    jaccard = np.empty((q, g), dtype=np.float32)
    for i in range(q):
        nz = np.flatnonzero(v[i])  # min(V_q, V_g) is 0 wherever V_q is 0: only these columns matter
        mins = np.minimum(gallery_vt[nz], v[i, nz][:, None]).sum(axis=0)
        maxs = v[i].sum() + gallery_mass - mins  # Σ max = Σ V_q + Σ V_g - Σ min
        jaccard[i] = 1.0 - mins / maxs

    out = (1.0 - lambda_value) * jaccard + lambda_value * dist[:q, q:]
    logger.debug("re-ranked %d queries x %d gallery in %.2fs", q, g, time.perf_counter() - start)
    return out.astype(np.float32)


def rerank_neighbourhood(query: np.ndarray, neighbours: np.ndarray, k1: int = int(RERANK_PARAMS["k1"]),
                         k2: int = int(RERANK_PARAMS["k2"]),
                         lambda_value: float = RERANK_PARAMS["lambda_value"]) -> np.ndarray:
    """Re-rank one query's retrieved neighbourhood: what ``rerank=true`` on ``/search`` computes.

    The pool is the query and its top-N gallery items only (not the whole gallery, as in the offline
    protocol): the k-reciprocal sets of items far down the ranking cannot reach the first places anyway,
    and the cost grows with N² instead of the gallery size squared. ``k1`` and ``k2`` are clipped to the
    neighbourhood as the evaluation clips them to its gallery (``training.protocols``).

    Args:
        query: ``[dim]`` or ``[1, dim]`` L2-normalised descriptor.
        neighbours: ``[N, dim]`` L2-normalised descriptors of the query's top-N gallery items.
        k1, k2, lambda_value: as :func:`k_reciprocal_rerank`.

    Returns:
        ``[N]`` float32 re-ranked distances (smaller = more similar).
    """
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    g = np.asarray(neighbours, dtype=np.float32)
    if g.ndim != 2 or g.shape[1] != q.shape[1] or len(g) == 0:
        raise ValueError(f"neighbours must be [N >= 1, {q.shape[1]}], got {g.shape}")
    k1 = int(min(k1, max(1, len(g) - 1)))
    k2 = int(min(k2, k1))
    # Cosine distances 1 - cos, as training.features.cosine_distance computes them on normalised vectors.
    return k_reciprocal_rerank(1.0 - q @ g.T, 1.0 - q @ q.T, 1.0 - g @ g.T, k1=k1, k2=k2,
                               lambda_value=lambda_value)[0]
