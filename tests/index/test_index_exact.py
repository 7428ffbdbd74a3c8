"""Exact kinds against a float64 numpy brute force, and the camera / time filters (every path)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_helpers import brute_force, meta

from index import Gallery, exact

EXACT = ["flat", "flat_fp16"]
# fp16 storage rounds each component to 11 significant bits: scores move by ~1e-3, so it is
# compared on scores only (ranks of near-ties can swap); float32 kinds also on ids.
SCORE_TOL = {"flat": 1e-5, "flat_fp16": 2e-3}


def _gallery(kind: str, x: np.ndarray, cameras: np.ndarray, **options) -> Gallery:
    gallery = Gallery.create(x.shape[1], kind, **options)
    stamps = np.arange(len(x), dtype=float) * 10.0
    gallery.add(x, meta(cameras, timestamp=stamps))
    return gallery


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 24)).astype(np.float32) * rng.uniform(0.1, 5, (500, 1)).astype(np.float32)
    q = rng.standard_normal((7, 24)).astype(np.float32)
    cameras = rng.integers(1, 7, 500)
    return x, q, cameras


@pytest.mark.parametrize("kind", EXACT)
def test_topk_equals_brute_force(kind: str, data) -> None:
    x, q, cameras = data
    gallery = _gallery(kind, x, cameras)
    scores, ids = gallery.search(q, 10)
    ref_s, ref_i = brute_force(x, q, 10)
    assert scores.shape == ids.shape == (7, 10) and scores.dtype == np.float32 and ids.dtype == np.int64
    np.testing.assert_allclose(scores, ref_s, atol=SCORE_TOL[kind])
    if kind != "flat_fp16":
        np.testing.assert_array_equal(ids, ref_i)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "best first"


@pytest.mark.parametrize("kind", EXACT)
def test_k_larger_than_gallery_pads_with_minus_one(kind: str, data) -> None:
    x, q, cameras = data
    gallery = _gallery(kind, x[:5], cameras[:5])
    scores, ids = gallery.search(q, 8)
    ref_s, _ref_i = brute_force(x[:5], q, 8)
    np.testing.assert_allclose(scores[:, :5], ref_s, atol=SCORE_TOL[kind])
    assert np.all(ids[:, 5:] == -1) and np.all(np.isneginf(scores[:, 5:]))
    assert sorted(ids[0, :5]) == [0, 1, 2, 3, 4]


def test_single_vector_query_and_empty_gallery() -> None:
    gallery = Gallery.create(4)
    scores, ids = gallery.search(np.ones(4), 3)
    assert ids.tolist() == [[-1, -1, -1]] and np.all(np.isneginf(scores))
    gallery.add(np.eye(4), meta([1, 1, 2, 2]))
    scores, ids = gallery.search(np.array([0.0, 0.0, 2.0, 0.1]), 2)  # 1-D query -> [1, k]
    assert ids.shape == (1, 2) and ids[0, 0] == 2
    assert scores[0, 0] == pytest.approx(2.0 / np.hypot(2.0, 0.1), abs=1e-6)  # normalised: a cosine


@pytest.mark.parametrize("kind", EXACT)
@pytest.mark.parametrize("filter_mode", ["auto", "selector", "wider"])
def test_camera_filter_returns_exactly_k_from_that_camera(kind: str, filter_mode: str, data) -> None:
    x, q, cameras = data
    gallery = _gallery(kind, x, cameras, filter_mode=filter_mode)
    for wanted in (3, [2, 5]):
        allowed = np.isin(cameras, wanted)
        scores, ids = gallery.search(q, 10, cameras=wanted)
        assert np.all(ids >= 0), "enough items match: k results each"
        assert np.all(np.isin(cameras[ids], wanted))
        ref_s, ref_i = brute_force(x[allowed], q, 10, ids=np.flatnonzero(allowed))
        np.testing.assert_allclose(scores, ref_s, atol=SCORE_TOL[kind])
        if kind != "flat_fp16":
            np.testing.assert_array_equal(ids, ref_i)
        got = gallery.get(ids[0])
        assert {m["camera"] for m in got} <= set(np.atleast_1d(wanted).tolist())


@pytest.mark.parametrize("filter_mode", ["auto", "selector", "wider"])
def test_rare_camera_and_time_range(filter_mode: str, data) -> None:
    x, q, cameras = data
    cameras = cameras.copy()
    cameras[[3, 77, 400]] = 9  # a camera with only 3 items, fewer than k
    gallery = _gallery("flat", x, cameras, filter_mode=filter_mode)
    scores, ids = gallery.search(q, 5, cameras=9)
    assert sorted(ids[0, :3]) == [3, 77, 400] and np.all(ids[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
    # timestamps are 10 * id: [1000, 1500] selects ids 100..150 inclusive
    scores, ids = gallery.search(q, 10, time_range=(1000, 1500))
    _ref_s, ref_i = brute_force(x[100:151], q, 10, ids=np.arange(100, 151))
    np.testing.assert_array_equal(ids, ref_i)
    scores, ids = gallery.search(q, 60, cameras=[1, 2], time_range=(None, 1500.0))
    expected = set(np.flatnonzero(np.isin(cameras, [1, 2]) & (np.arange(500) <= 150)).tolist())
    assert {int(i) for i in ids[0] if i >= 0} == expected
    assert gallery.search(q, 3, cameras=42)[1].tolist() == [[-1, -1, -1]] * 7


def test_items_without_timestamp_never_match_a_time_range() -> None:
    gallery = Gallery.create(3)
    gallery.add(np.eye(3), [{"camera": 1}, {"camera": 1, "timestamp": "2024-05-01T12:00:00+00:00"},
                            {"camera": 1, "timestamp": 5.0}])
    _, ids = gallery.search(np.ones(3), 3, time_range=(0, None))
    assert sorted(ids[0, :2].tolist()) == [1, 2] and ids[0, 2] == -1
    assert gallery.get([1])[0]["timestamp"] == pytest.approx(1714564800.0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), dim=st.integers(1, 9), k=st.integers(1, 50), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["flat"]))
def test_property_exact_search_matches_numpy(n: int, dim: int, k: int, seed: int, kind: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32) + 0.01
    q = rng.standard_normal((3, dim)).astype(np.float32) + 0.01
    gallery = Gallery.create(dim, kind)
    gallery.add(x, meta(np.ones(n)))
    scores, ids = gallery.search(q, k)
    ref_s, _ = brute_force(x, q, k)
    width = min(k, n)
    np.testing.assert_allclose(scores[:, :width], ref_s, atol=1e-5)
    assert np.all(ids[:, width:] == -1)
    # ids must be the items whose cosine is the reported score
    xs = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    qs = q / np.linalg.norm(q.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(np.take_along_axis(qs @ xs.T, ids[:, :width], axis=1), ref_s, atol=1e-5)


@pytest.fixture(scope="module")
def large() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Big enough for every FAISS path: > SINGLE_THREAD_WORK pairs at batch 1, sgemm from batch 2 at d=1536."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((24_000, 32)).astype(np.float32)
    q = rng.standard_normal((200, 32)).astype(np.float32)
    return x, q, rng.integers(1, 21, len(x))  # 20 cameras: one is 5 % of the gallery


@pytest.mark.parametrize("kind", EXACT)
@pytest.mark.parametrize("batch", [1, 3, 200])
def test_every_search_path_equals_brute_force(kind: str, batch: int, large) -> None:
    """Batch 1 (FAISS's split over threads, or index.exact's), small batches (per-query scan), 200 x 32
    floats (sgemm): the same top-k; and filters of 5 % (scan of the allowed rows) and 95 % (search
    wider) of the gallery against brute force over the allowed items."""
    x, q, cameras = large
    gallery = _gallery(kind, x, cameras)
    q = q[:batch]
    scores, ids = gallery.search(q, 10)
    ref_s, ref_i = brute_force(x, q, 10)
    np.testing.assert_allclose(scores, ref_s, atol=SCORE_TOL[kind])
    if kind != "flat_fp16":
        np.testing.assert_array_equal(ids, ref_i)
    for wanted in ([7], [c for c in range(1, 21) if c != 7]):
        allowed = np.isin(cameras, wanted)
        plan = exact.filter_plan(int(allowed.sum()), len(x), x.shape[1])
        assert plan == ("subset" if len(wanted) == 1 else "wider")
        scores, ids = gallery.search(q, 10, cameras=wanted)
        ref_s, ref_i = brute_force(x[allowed], q, 10, ids=np.flatnonzero(allowed))
        np.testing.assert_allclose(scores, ref_s, atol=SCORE_TOL[kind])
        assert np.all(np.isin(cameras[ids], wanted))
        if kind != "flat_fp16":
            np.testing.assert_array_equal(ids, ref_i)


def test_split_search_merges_ranges_like_one_scan(large) -> None:
    """index.exact.split_search over 1..5 ranges returns one scan's answer (positions, best first)."""
    import faiss

    x, q, _ = large
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(xn[:1000])
    qn = q[:2] / np.linalg.norm(q[:2], axis=1, keepdims=True)
    ref_s, ref_i = brute_force(xn[:1000], qn, 7)
    for parts in (1, 2, 5):
        scores, positions = exact.split_search(flat, qn, 7, parts)
        np.testing.assert_array_equal(positions, ref_i)
        np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    scores, positions = exact.split_search(flat, qn, 1500, 3)  # more than stored: padded
    assert (positions[:, 1000:] == -1).all() and np.isneginf(scores[:, 1000:]).all()
