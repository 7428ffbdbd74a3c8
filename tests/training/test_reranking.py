"""k-reciprocal re-ranking against a plainly written reference and properties from the paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.reranking import k_reciprocal_rerank


def _dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))


def ref_rerank(qg: np.ndarray, qq: np.ndarray, gg: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017, eq. 1-12, with sets and loops in float64 (same conventions as the module)."""
    q, g = qg.shape
    n = q + g
    d = [[0.0] * n for _ in range(n)]
    for a in range(n):
        for b in range(n):
            if a < q and b < q:
                d[a][b] = float(qq[a, b])
            elif a < q:
                d[a][b] = float(qg[a, b - q])
            elif b < q:
                d[a][b] = float(qg[b, a - q])
            else:
                d[a][b] = float(gg[a - q, b - q])
    for a in range(n):
        m = max(d[a])
        d[a] = [x / m for x in d[a]]
    k1 = min(k1, n - 1)
    order = [sorted(range(n), key=lambda b, a=a: (-1.0 if b == a else d[a][b], b)) for a in range(n)]

    def nn(p: int, k: int) -> set[int]:
        return set(order[p][: k + 1])

    def recip(p: int, k: int) -> set[int]:
        return {x for x in nn(p, k) if p in nn(x, k)}

    vs = []
    for p in range(n):
        r = recip(p, k1)
        star = set(r)
        for c in r:
            rc = recip(c, (k1 + 1) // 2)
            if len(r & rc) >= 2 / 3 * len(rc):
                star |= rc
        w = {x: math.exp(-d[p][x]) for x in star}
        total = sum(w.values())
        vs.append([w.get(x, 0.0) / total for x in range(n)])
    vq = [[sum(vs[x][j] for x in order[p][: min(k2, n)]) / min(k2, n) for j in range(n)] for p in range(n)]
    out = np.zeros((q, g))
    for i in range(q):
        for j in range(g):
            a, b = vq[i], vq[q + j]
            jac = 1 - sum(min(x, y) for x, y in zip(a, b)) / sum(max(x, y) for x, y in zip(a, b))
            out[i, j] = (1 - lam) * jac + lam * d[i][q + j]
    return out


def _problem(q: int, g: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 5))
    xq = centres[rng.integers(0, 4, q)] + 0.5 * rng.normal(size=(q, 5))
    xg = centres[rng.integers(0, 4, g)] + 0.5 * rng.normal(size=(g, 5))
    return _dists(xq, xg), _dists(xq, xq), _dists(xg, xg)


def test_hand_worked_three_points() -> None:
    # Points on a line: query 0, gallery g1 = 0.1, g2 = 5. Row-normalised distances:
    #   q: (0, 0.1/5 = a = 0.02, 1)   g1: (0.1/4.9 = b, 0, 1)   g2: (1, 0.98, 0)
    # k1 = 1: N(q) = {q, g1}, N(g1) = {g1, q}, N(g2) = {g2, g1} -> R(q) = {q, g1}, R(g1) = {g1, q}, R(g2) = {g2}
    # V_q = (1, e^-a, 0) / (1 + e^-a) = (s(a), s(-a), 0) with s(x) = 1 / (1 + e^-x); V_g1 = (s(-b), s(b), 0)
    # (k2 = 1: no expansion). d_J(q, g1) = 1 - [s(-b) + s(-a)] / [s(a) + s(b)];  d_J(q, g2) = 1 - 0 / 2 = 1
    # final: 0.7 * d_J + 0.3 * d  ->  (0.7 * d_J(q, g1) + 0.3 * 0.02, 0.7 + 0.3)
    x = np.array([[0.0]]), np.array([[0.1], [5.0]])
    out = k_reciprocal_rerank(_dists(x[0], x[1]), _dists(x[0], x[0]), _dists(x[1], x[1]), k1=1, k2=1,
                              lambda_value=0.3)
    a, b = 0.02, 0.1 / 4.9
    s = lambda t: 1 / (1 + math.exp(-t))  # noqa: E731
    d_j = 1 - (s(-b) + s(-a)) / (s(a) + s(b))  # = 0.0200021...
    assert out.shape == (1, 2)
    assert out[0, 0] == pytest.approx(0.7 * d_j + 0.3 * a, abs=1e-6)
    assert out[0, 1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("q, g, k1, k2, lam", [(3, 7, 4, 2, 0.3), (5, 12, 6, 3, 0.3), (4, 9, 20, 6, 0.5),
                                               (6, 10, 2, 1, 0.0)])
def test_matches_reference(q: int, g: int, k1: int, k2: int, lam: float) -> None:
    qg, qq, gg = _problem(q, g, seed=q * 31 + g)
    out = k_reciprocal_rerank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(out, ref_rerank(qg, qq, gg, k1, k2, lam), atol=2e-6)


def test_large_k1_is_finite() -> None:
    qg, qq, gg = _problem(3, 6, seed=1)
    out = k_reciprocal_rerank(qg, qq, gg, k1=1000, k2=50)
    assert out.shape == (3, 6) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= -1e-6).all() and (out <= 1 + 1e-6).all()


def test_duplicate_of_query_stays_rank_one() -> None:
    rng = np.random.default_rng(3)
    xg = rng.normal(size=(30, 8))
    xq = rng.normal(size=(5, 8))
    xg[[4, 11, 17, 22, 29]] = xq  # each query has an exact duplicate in the gallery
    out = k_reciprocal_rerank(_dists(xq, xg), _dists(xq, xq), _dists(xg, xg))
    np.testing.assert_array_equal(out.argmin(axis=1), [4, 11, 17, 22, 29])


def test_lambda_one_keeps_original_ranking() -> None:
    qg, qq, gg = _problem(4, 15, seed=2)
    out = k_reciprocal_rerank(qg, qq, gg, lambda_value=1.0)
    np.testing.assert_array_equal(np.argsort(out, axis=1, kind="stable"), np.argsort(qg, axis=1, kind="stable"))


def test_rejects_bad_input() -> None:
    qg, qq, gg = _problem(3, 5, seed=0)
    with pytest.raises(ValueError, match="q_q_dist must have shape \\(3, 3\\)"):
        k_reciprocal_rerank(qg, gg, gg)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(qg, qq, gg, lambda_value=1.5)
    with pytest.raises(ValueError, match="k1 and k2"):
        k_reciprocal_rerank(qg, qq, gg, k1=0)
