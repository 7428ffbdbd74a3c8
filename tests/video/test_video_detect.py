"""Detection: background subtraction on synthetic clips, and a user's YOLO-layout ONNX detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.indexing.video.decode import VideoSource, median_background
from serving.indexing.video.detect import DOUBTFUL, GUESS, SURE, BackgroundDetector
from serving.indexing.video.mot import read_mot
from serving.indexing.video.setup import build_detector
from xmreid.errors import UserError


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def match_counts(video: Path, gt: Path, detector: BackgroundDetector) -> tuple[int, int, int]:
    """(true positives, false positives, misses) at IoU 0.5 over the clip."""
    truth = read_mot(gt)
    tp = fp = fn = 0
    for index, frame in VideoSource(video).frames():
        boxes = detector.detect(frame).xyxy
        wanted = [box for _, box in truth.get(index, [])]
        used: set[int] = set()
        for box in boxes:
            best = max(((iou(box, g), j) for j, g in enumerate(wanted) if j not in used), default=(0.0, -1))
            if best[0] >= 0.5:
                used.add(best[1])
                tp += 1
            else:
                fp += 1
        fn += len(wanted) - len(used)
    return tp, fp, fn


@pytest.mark.parametrize("method", ["mog2", "knn"])
def test_background_subtraction_finds_the_walkers(clip_dir: Path, method: str) -> None:
    detector = BackgroundDetector(method)
    detector.prime(median_background(clip_dir / "cam1.mp4"))
    tp, fp, fn = match_counts(clip_dir / "cam1.mp4", clip_dir / "cam1.txt", detector)
    assert tp / (tp + fn) >= 0.9 and tp / (tp + fp) >= 0.9, (tp, fp, fn)


def test_without_priming_the_first_frame_is_not_all_foreground(clip_dir: Path) -> None:
    detector = BackgroundDetector()
    frame = next(VideoSource(clip_dir / "cam1.mp4").frames())[1]
    assert len(detector.detect(frame)) == 0


def test_a_scene_without_people_gives_no_boxes(clip_dir: Path) -> None:
    detector = BackgroundDetector()
    assert sum(len(detector.detect(f)) for _, f in VideoSource(clip_dir / "still.mp4").frames()) == 0


def test_infrared_frames_work_alike(tmp_path: Path) -> None:
    from video_clips import render_clip, two_walkers, write_gt

    write_gt(tmp_path / "ir.txt", render_clip(tmp_path / "ir.mp4", two_walkers(), 60, seed=5, infrared=True))
    detector = BackgroundDetector()
    detector.prime(median_background(tmp_path / "ir.mp4"))
    tp, fp, fn = match_counts(tmp_path / "ir.mp4", tmp_path / "ir.txt", detector)
    assert tp / (tp + fn) >= 0.9, (tp, fp, fn)


def test_people_side_by_side_are_cut_apart_and_edge_boxes_are_doubtful() -> None:
    detector = BackgroundDetector(scale=1.0)
    empty = np.full((240, 320, 3), 90, np.uint8)
    detector.prime(empty)
    frame = empty.copy()
    frame[50:170, 100:148] = 220  # two people shoulder to shoulder: one blob 100 wide, 120 tall
    frame[50:170, 152:200] = 220
    frame[100:200, 0:30] = 220  # someone entering at the left edge
    frame[200:230, 200:300] = 220  # something flat: no row of people
    boxes = detector.detect(frame)
    order = np.argsort(boxes.xyxy[:, 0])
    xyxy, conf = boxes.xyxy[order], boxes.confidence[order]
    assert len(xyxy) == 4 and conf[3] == DOUBTFUL
    xyxy, conf = xyxy[:3], conf[:3]
    assert conf[0] == SURE  # half in view at the edge, but person-shaped
    assert all(c == GUESS for c in conf[1:])  # a cut is a guess
    assert abs(xyxy[1, 2] - 150) <= 4 and abs(xyxy[2, 0] - 150) <= 4  # cut at the gap between them


def _yolo_model(path: Path, rows: np.ndarray, transposed: bool, size: int = 64) -> Path:
    """An ONNX graph in the YOLO export layout whose output is ``rows`` whatever the image (plus 0 * image)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = rows.T[None] if not transposed else rows[None]  # [1, 4+C, N] or [1, N, 4+C]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["boxes", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolo", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out.shape))],
        initializer=[numpy_helper.from_array(out.astype(np.float32), "boxes"),
                     numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("transposed", [False, True])
def test_onnx_detector_letterboxes_suppresses_and_keeps_people(tmp_path: Path, transposed: bool) -> None:
    # Input 64x64; a 128x64 (w x h) frame is scaled by 0.5 and padded 16 px above and below.
    rows = np.array([
        # cx, cy, w, h, person, car
        [20, 32, 10, 20, 0.90, 0.10],  # a person
        [21, 32, 10, 20, 0.80, 0.10],  # the same person again (suppressed)
        [45, 32, 10, 20, 0.10, 0.95],  # a car
        [50, 30, 8, 16, 0.20, 0.00],   # below the confidence threshold
    ] + [[30, 30, 5, 5, 0.0, 0.0]] * 8, np.float32)  # empty candidates (a real model has thousands)
    detector = build_detector(_yolo_model(tmp_path / "yolo.onnx", rows, transposed))
    boxes = detector.detect(np.zeros((64, 128, 3), np.uint8))
    assert len(boxes) == 1 and boxes.confidence[0] == pytest.approx(0.9)
    # Input box (15, 22)-(25, 42) -> minus the padding (0, 16) -> divided by the scale 0.5.
    np.testing.assert_allclose(boxes.xyxy[0], [30, 12, 50, 52], atol=1e-4)


def test_bad_detectors_are_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid: mog2, knn"):
        build_detector("hog")
    with pytest.raises(UserError, match="no such file"):
        build_detector(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="not an ONNX model"):
        build_detector(tmp_path / "junk.onnx")


def test_a_body_cut_by_a_garment_of_the_floors_colour_is_joined_but_two_people_stacked_are_not() -> None:
    detector = BackgroundDetector(scale=1.0)
    empty = np.full((240, 320, 3), 90, np.uint8)
    detector.prime(empty)
    frame = empty.copy()
    frame[20:70, 40:70] = 220  # head and torso
    frame[100:130, 42:50] = 220  # two legs below a skirt the colour of the floor
    frame[100:130, 60:68] = 220
    frame[10:90, 200:232] = 220  # a far person
    frame[100:200, 195:235] = 220  # a near one, right below
    boxes = detector.detect(frame)
    order = np.argsort((boxes.xyxy[:, 0] > 150) * 1000 + boxes.xyxy[:, 1])  # the left one, then top to bottom
    np.testing.assert_allclose(boxes.xyxy[order], [[40, 20, 70, 130], [200, 10, 232, 90], [195, 100, 235, 200]],
                               atol=4)
