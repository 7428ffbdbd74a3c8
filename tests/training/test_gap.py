"""The modality-gap table (training.gap) on hand-made descriptors whose answers are known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.data.records import Record
from training.gap import alignment, flat_gap, format_gap, gap_subset, modality_gap, roc_auc, setting_metrics


def _records(pids=range(6), per_cam: int = 4) -> list[Record]:
    out = []
    for pid in pids:
        for cam in (1, 2, 3, 4, 5, 6):
            mod = "ir" if cam in (3, 6) else "rgb"
            out += [Record(f"cam{cam}/{pid:04d}/{n:04d}.jpg", pid, cam, mod) for n in range(per_cam)]
    return out


def _codes(records, code) -> np.ndarray:
    return np.stack([code(r) for r in records]).astype(np.float32)


def _onehot(i: int, d: int = 64) -> np.ndarray:
    v = np.zeros(d)
    v[i] = 1.0
    return v


def test_modality_specific_codes_fail_only_across_modalities() -> None:
    recs = _records()
    # Identity in both modalities, but with a different code per modality: the textbook gap.
    noise = np.random.default_rng(0)
    feats = _codes(recs, lambda r: _onehot(r.pid + (10 * (r.modality == "ir"))) + 0.01 * noise.standard_normal(64))
    assert setting_metrics(feats, recs, "rgb", "rgb")["r1"] == 1.0
    assert setting_metrics(feats, recs, "ir", "ir")["r1"] == 1.0
    a = alignment(feats, recs)
    assert a["xm_auc"] == pytest.approx(0.5, abs=0.1) and a["rgb_auc"] == 1.0
    assert a["xm_margin"] == pytest.approx(0.0, abs=0.02) and a["mmd"] > 0.1
    # A shared code crosses the gap: everything is perfect and the modalities coincide.
    shared = _codes(recs, lambda r: _onehot(r.pid))
    for q, g in (("ir", "rgb"), ("rgb", "rgb"), ("ir", "ir")):
        m = setting_metrics(shared, recs, q, g)
        assert m["r1"] == 1.0 and m["mAP"] == 1.0 and m["ids"] == 6
    a = alignment(shared, recs)
    assert a["xm_auc"] == 1.0 and a["mmd"] == pytest.approx(0.0, abs=1e-9) and a["xm_margin"] == 1.0


def test_within_modality_is_cross_camera() -> None:
    recs = _records()
    # Images of one camera are identical whoever is pictured: same-camera matching would be "perfect"
    # camera recognition, so the setting must exclude the query's own camera.
    feats = _codes(recs, lambda r: _onehot(r.camid) + _onehot(20 + r.pid) * 0.1)
    m = setting_metrics(feats, recs, "rgb", "rgb")
    assert m["r1"] == 1.0  # other cameras tie on the camera code; the identity code decides
    cam_only = _codes(recs, lambda r: _onehot(r.camid))
    assert setting_metrics(cam_only, recs, "rgb", "rgb")["r1"] < 0.5  # all ties: first gallery item wins


def test_rank1_and_map_against_brute_force() -> None:
    recs = _records(range(5), per_cam=3)
    feats = np.random.default_rng(1).standard_normal((len(recs), 8)).astype(np.float32)
    got = setting_metrics(feats, recs, "ir", "rgb")
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    r1, aps = [], []
    for i, q in enumerate(recs):
        if q.modality != "ir":
            continue
        cands = sorted((-float(x[i] @ x[j]), j) for j, g in enumerate(recs) if g.modality == "rgb")
        hits = [recs[j].pid == q.pid for _, j in cands]
        r1.append(hits[0])
        prec = [sum(hits[:k + 1]) / (k + 1) for k in range(len(hits)) if hits[k]]
        aps.append(sum(prec) / len(prec))
    assert got["r1"] == pytest.approx(np.mean(r1)) and got["mAP"] == pytest.approx(np.mean(aps), rel=1e-6)


def test_auc_is_the_pairwise_win_rate() -> None:
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)  # many ties
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    assert roc_auc(pos, neg) == pytest.approx(wins / (30 * 40))


def test_subset_and_full_table() -> None:
    recs = _records(range(10), per_cam=6)
    sub = gap_subset(recs)
    assert len(sub) == 10 * 6 * 4 and all(int(r.path[-8:-4]) < 4 for r in sub)
    few = gap_subset(recs, max_ids=3, seed=0)
    assert len({r.pid for r in few}) == 3 and few == gap_subset(recs, max_ids=3, seed=0)
    train, test = _records(range(20, 40)), _records(range(5))
    feats = {r.path + str(r.pid): _onehot(r.pid) for r in train + test}
    table = modality_gap(lambda paths: np.stack([feats[p] for p in paths]),
                         [Record(r.path + str(r.pid), r.pid, r.camid, r.modality) for r in train],
                         [Record(r.path + str(r.pid), r.pid, r.camid, r.modality) for r in test])
    assert table["train_ir_to_rgb"]["ids"] == 5 == table["test_ir_to_rgb"]["ids"]  # same chance level
    assert all(table[k]["r1"] == 1.0 for k in ("test_ir_to_rgb", "test_rgb_to_rgb", "test_ir_to_ir",
                                               "train_ir_to_rgb"))
    row = flat_gap(table)
    assert row["test_ir_to_rgb_r1"] == 1.0 and row["xm_auc"] == 1.0
    text = format_gap(table)
    assert "test IR->RGB" in text and "chance rank-1 ~ 20.0 %" in text and "xm_auc 1.000" in text
