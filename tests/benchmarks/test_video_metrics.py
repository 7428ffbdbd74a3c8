"""The video benchmark's scores against values computed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import _video_metrics as vm

A, B, FAR = (0, 0, 10, 10), (100, 0, 10, 10), (300, 300, 10, 10)


def rows(*boxes: tuple) -> np.ndarray:
    """MOT rows from ``(frame, id, (left, top, width, height))``."""
    return np.array([[f, i, *box] for f, i, box in boxes], np.float64).reshape(-1, 6)


def test_iou_and_one_to_one_matching() -> None:
    assert vm.iou([A], [A])[0, 0] == 1
    assert vm.iou([A], [(5, 0, 10, 10)])[0, 0] == pytest.approx(50 / 150)
    assert vm.iou([A], [B])[0, 0] == 0
    assert vm.iou(np.zeros((0, 4)), [A]).shape == (0, 1)
    # Two predictions on one box: only one is matched; a 1/3 overlap is below 0.5.
    assert vm.match(np.array([A]), np.array([(1, 0, 10, 10), (0, 1, 10, 10)])) in ([(0, 0)], [(0, 1)])
    assert vm.match(np.array([A]), np.array([(5, 0, 10, 10)])) == []


def test_read_mot(tmp_path: Path) -> None:
    path = tmp_path / "gt.txt"
    path.write_text("1,3,10,20,30,40,1,1,0.5\n\n2,3,11,20,30,40,1,1,1.0\n")
    assert vm.read_mot(path).tolist() == [[1, 3, 10, 20, 30, 40], [2, 3, 11, 20, 30, 40]]
    assert vm.read_mot(path, columns=9)[:, 8].tolist() == [0.5, 1.0]
    path.write_text("")
    assert vm.read_mot(path).shape == (0, 6)
    path.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="gt.txt:1"):
        vm.read_mot(path)


def test_detection_recall_and_precision() -> None:
    gt = rows((1, 1, A), (1, 2, B), (2, 1, A), (2, 2, B))
    # Frame 1: both found; frame 2: A found, B missed, one box on nothing.
    pred = rows((1, 7, A), (1, 8, B), (2, 7, (1, 1, 10, 10)), (2, 9, FAR))
    scores = vm.detection_scores(gt, pred)
    assert scores == {"det_recall": 0.75, "det_precision": 0.75, "tp": 3, "fp": 1, "fn": 1, "gt": 4, "pred": 4}
    assert vm.matched_gt(gt, pred).tolist() == [True, True, True, False]
    assert vm.detection_scores(gt, rows())["det_precision"] is None
    assert vm.detection_scores(gt, rows())["det_recall"] == 0


def test_one_id_switch_mota_and_idf1() -> None:
    # Two people over two frames; the tracker gives A a new id in frame 2 and adds a false box there.
    gt = rows((1, 1, A), (1, 2, B), (2, 1, A), (2, 2, B))
    pred = rows((1, 7, A), (1, 8, B), (2, 9, A), (2, 8, B), (2, 5, FAR))
    scores = vm.tracking_scores({"cam1": (gt, pred)})
    for name in ("cam1", "overall"):
        s = scores[name]
        assert s["id_switches"] == 1 and s["false_positives"] == 1 and s["misses"] == 0
        # MOTA = 1 - (misses + false positives + switches) / ground-truth boxes = 1 - 2/4.
        assert s["mota"] == pytest.approx(0.5)
        # IDF1: best one-to-one track pairing 7-A (1 box), 8-B (2 boxes): IDTP = 3; 2*3 / (4 gt + 5 pred).
        assert s["idf1"] == pytest.approx(6 / 9)
        assert s["motp_iou"] == pytest.approx(1.0) and s["gt_boxes"] == 4 and s["gt_tracks"] == 2


def test_perfect_tracks_and_overall_over_clips() -> None:
    gt = rows((1, 1, A), (2, 1, A))
    perfect = vm.tracking_scores({"cam1": (gt, gt.copy()), "cam2": (gt, rows())})
    assert perfect["cam1"]["idf1"] == 1 and perfect["cam1"]["mota"] == 1
    assert perfect["cam2"]["misses"] == 2 and perfect["cam2"]["mota"] == 0
    # Overall: 2 of 4 ground-truth boxes found, no false box, no switch.
    assert perfect["overall"]["mota"] == pytest.approx(0.5)
    assert perfect["overall"]["idf1"] == pytest.approx(2 * 2 / (4 + 2))


def test_track_people_majority_of_matched_boxes() -> None:
    gt = rows((1, 1, A), (2, 1, A), (3, 1, A), (3, 2, B), (4, 2, B))
    # Track 7: A, A, then B twice -> 2 votes each, tie -> the smaller id. Track 8: A once. Track 9: nothing.
    pred = rows((1, 7, A), (2, 7, A), (3, 7, B), (4, 7, B), (3, 8, A), (4, 9, FAR))
    assert vm.track_people(pred, gt) == {7: 1, 8: 1, 9: None}
    pred2 = rows((1, 7, A), (3, 7, B), (4, 7, B))
    assert vm.track_people(pred2, gt) == {7: 2}


def test_average_precision_and_rank1() -> None:
    assert vm.average_precision([True, False, True]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert vm.average_precision([False, True], n_relevant=2) == pytest.approx((1 / 2) / 2)
    assert vm.average_precision([False, False]) == 0
    scores = vm.retrieval_scores([
        (1, [1, 2, 1], None),   # right; AP (1 + 2/3) / 2
        (2, [None, 2], 1),      # a false gallery track first: wrong; AP 1/2
        (None, [1], None),      # a false query track: left out
        (3, [1, 2], 0),         # person 3 has no gallery track: left out
    ])
    assert scores["rank1"] == pytest.approx(0.5)
    assert scores["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert (scores["queries"], scores["no_person"], scores["no_match"]) == (2, 1, 1)
    assert vm.retrieval_scores([])["rank1"] is None
