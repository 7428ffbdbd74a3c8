"""eval_sysu / eval_regdb against a plainly written loop reference and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation import eval_regdb, eval_sysu


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, unique_cmc):
    """Plain loops over queries and ranks: the definition of the metrics, written for clarity."""
    cmcs, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        # Stable ranking: ties broken by gallery index (sorted() is stable).
        ranking = sorted(range(distmat.shape[1]), key=lambda j: distmat[q, j])
        if q_camids is not None and q_camids[q] == 3:
            ranking = [j for j in ranking if g_camids[j] != 2]
        pids = [g_pids[j] for j in ranking]
        if q_pids[q] not in pids:
            continue  # no valid match: skipped
        if unique_cmc:
            reduced = []
            for p in pids:
                if p not in reduced:
                    reduced.append(p)
            first = reduced.index(q_pids[q])
        else:
            first = pids.index(q_pids[q])
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
        hits, precisions, last = 0, [], 0
        for rank, p in enumerate(pids, start=1):
            if p == q_pids[q]:
                hits += 1
                precisions.append(hits / rank)
                last = rank
        aps.append(sum(precisions) / hits)
        inps.append(hits / last)
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


@pytest.mark.parametrize("num_q,num_g,num_ids,levels,seed", [
    (1, 1, 1, 0, 0), (5, 7, 3, 0, 1), (20, 30, 8, 4, 2), (40, 25, 12, 0, 3), (60, 120, 20, 6, 4),
    (600, 80, 30, 5, 5),  # more queries than one internal block (512)
])
def test_against_loop_reference(num_q, num_g, num_ids, levels, seed):
    rng = np.random.default_rng(seed)
    # levels > 0 quantises distances to a few values: many ties.
    distmat = rng.integers(0, levels, (num_q, num_g)).astype(float) if levels else rng.random((num_q, num_g))
    # Query identities include some that never appear in the gallery (no valid match).
    q_pids = rng.integers(0, num_ids + 3, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_pids[0] = g_pids[0]  # at least one valid query
    q_cams = rng.choice([3, 6], num_q)
    g_cams = rng.choice([1, 2, 4, 5], num_g)
    q_cams[0] = 6  # ... and valid under the camera rule too
    for max_rank in (1, 5, 20):
        cmc, m_ap, m_inp = eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank)
        r_cmc, r_ap, r_inp = _reference(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, unique_cmc=True)
        np.testing.assert_allclose(cmc, r_cmc, atol=1e-12)
        assert m_ap == pytest.approx(r_ap, abs=1e-12) and m_inp == pytest.approx(r_inp, abs=1e-12)
        cmc, m_ap, m_inp = eval_regdb(distmat, q_pids, g_pids, max_rank=max_rank)
        r_cmc, r_ap, r_inp = _reference(distmat, q_pids, g_pids, None, None, max_rank, unique_cmc=False)
        np.testing.assert_allclose(cmc, r_cmc, atol=1e-12)
        assert m_ap == pytest.approx(r_ap, abs=1e-12) and m_inp == pytest.approx(r_inp, abs=1e-12)
        assert cmc.shape == (max_rank,) and np.all(np.diff(cmc) >= 0)


def test_regdb_hand_worked():
    # One query of identity 7 against five gallery images.
    distmat = np.array([[0.3, 0.1, 0.4, 0.2, 0.5]])
    g_pids = np.array([7, 3, 7, 3, 5])
    # Sorted by distance: idx1 (0.1, pid 3), idx3 (0.2, pid 3), idx0 (0.3, pid 7), idx2 (0.4, pid 7), idx4.
    # True matches at ranks 3 and 4: AP = (1/3 + 2/4) / 2 = 5/12; INP = 2 matches / rank 4 = 1/2.
    # Standard CMC: first match at rank 3 -> [0, 0, 1, 1, 1].
    cmc, m_ap, m_inp = eval_regdb(distmat, np.array([7]), g_pids, max_rank=5)
    np.testing.assert_allclose(cmc, [0, 0, 1, 1, 1])
    assert m_ap == pytest.approx(5 / 12) and m_inp == pytest.approx(0.5)


def test_sysu_unique_identity_cmc_hand_worked():
    # Same ranking as above: identities 3, 3, 7, 7, 5. Reduced to unique identities: 3, 7, 5, so
    # the SYSU CMC finds identity 7 at rank 2 (not 3): [0, 1, 1]. mAP/mINP use the full list: 5/12, 1/2.
    distmat = np.array([[0.3, 0.1, 0.4, 0.2, 0.5]])
    g_pids = np.array([7, 3, 7, 3, 5])
    cams = np.array([1, 1, 4, 4, 5])
    cmc, m_ap, m_inp = eval_sysu(distmat, np.array([7]), g_pids, np.array([6]), cams, max_rank=3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert m_ap == pytest.approx(5 / 12) and m_inp == pytest.approx(0.5)


def test_camera3_query_drops_camera2_gallery():
    # Gallery: idx0 pid 1 cam 2 (nearest), idx1 pid 2 cam 1, idx2 pid 1 cam 4.
    distmat = np.array([[0.1, 0.2, 0.3]] * 2)
    g_pids, g_cams = np.array([1, 2, 1]), np.array([2, 1, 4])
    # Query from cam 6 keeps everything: ranking 1, 2, 1 -> rank-1 hit; AP = (1/1 + 2/3) / 2 = 5/6; INP = 2/3.
    cmc, m_ap, m_inp = eval_sysu(distmat[:1], np.array([1]), g_pids, np.array([6]), g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])
    assert m_ap == pytest.approx(5 / 6) and m_inp == pytest.approx(2 / 3)
    # Same query from cam 3 loses idx0 (cam 2): ranking 2, 1 -> rank-2 hit; AP = 1/2; INP = 1/2.
    cmc, m_ap, m_inp = eval_sysu(distmat[:1], np.array([1]), g_pids, np.array([3]), g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert m_ap == pytest.approx(0.5) and m_inp == pytest.approx(0.5)
    # The rule only drops camera 2: a cam-3 query whose only match is on cam 2 becomes invalid and is
    # skipped, so the average is over the other (cam-6) query alone.
    g_pids2 = np.array([1, 2, 2])
    cmc, m_ap, _ = eval_sysu(distmat, np.array([1, 1]), g_pids2, np.array([3, 6]), g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])
    assert m_ap == pytest.approx(1.0)


def test_skipped_queries_do_not_dilute_the_average():
    # Query 0 (pid 1) is ranked first; query 1 (pid 9) has no gallery match and is skipped: CMC = 1, not 0.5.
    distmat = np.array([[0.1, 0.9], [0.5, 0.5]])
    cmc, m_ap, m_inp = eval_regdb(distmat, np.array([1, 9]), np.array([1, 2]), max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])
    assert (m_ap, m_inp) == (1.0, 1.0)


def test_short_gallery_curve_keeps_max_rank_length():
    cmc, _, _ = eval_sysu(np.array([[0.2, 0.1]]), np.array([1]), np.array([1, 2]), np.array([6]),
                          np.array([1, 4]), max_rank=20)
    assert cmc.shape == (20,)
    np.testing.assert_allclose(cmc, [0] + [1] * 19)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query has a valid match"):
        eval_regdb(np.zeros((2, 3)), np.array([5, 6]), np.array([1, 2, 3]))
    # Only match is on camera 2 and the query is from camera 3: nothing valid.
    with pytest.raises(ValueError, match="no query has a valid match"):
        eval_sysu(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([3]), np.array([2, 1]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(distmat=np.zeros(3)), "2-D"),
    (dict(q_pids=np.zeros(5)), "q_pids must have shape"),
    (dict(g_pids=np.zeros(2)), "g_pids must have shape"),
    (dict(max_rank=0), "max_rank"),
    (dict(distmat=np.full((2, 3), np.nan)), "NaN"),
])
def test_malformed_inputs(kwargs, message):
    args = dict(distmat=np.zeros((2, 3)), q_pids=np.zeros(2), g_pids=np.zeros(3), max_rank=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        eval_regdb(**args)
