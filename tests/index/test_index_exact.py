"""Exact kinds against a float64 numpy brute force, and the camera / time filters (both paths)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_helpers import brute_force, meta

from index import Gallery

EXACT = ["flat", "flat_blas", "flat_fp16"]
# fp16 storage rounds each component to 11 significant bits: scores move by ~1e-3, so it is
# compared on scores only (ranks of near-ties can swap); float32 kinds also on ids.
SCORE_TOL = {"flat": 1e-5, "flat_blas": 1e-5, "flat_fp16": 2e-3}


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
    ref_s, ref_i = brute_force(x[:5], q, 8)
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
@pytest.mark.parametrize("filter_mode", ["selector", "wider"])
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


@pytest.mark.parametrize("filter_mode", ["selector", "wider"])
def test_rare_camera_and_time_range(filter_mode: str, data) -> None:
    x, q, cameras = data
    cameras = cameras.copy()
    cameras[[3, 77, 400]] = 9  # a camera with only 3 items, fewer than k
    gallery = _gallery("flat", x, cameras, filter_mode=filter_mode)
    scores, ids = gallery.search(q, 5, cameras=9)
    assert sorted(ids[0, :3]) == [3, 77, 400] and np.all(ids[:, 3:] == -1) and np.all(np.isneginf(scores[:, 3:]))
    # timestamps are 10 * id: [1000, 1500] selects ids 100..150 inclusive
    scores, ids = gallery.search(q, 10, time_range=(1000, 1500))
    ref_s, ref_i = brute_force(x[100:151], q, 10, ids=np.arange(100, 151))
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
       kind=st.sampled_from(["flat", "flat_blas"]))
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
