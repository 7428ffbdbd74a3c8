"""The video benchmark: scoring of the stages' answers (by hand), the clip-set checks, and one run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import video
from benchmarks._video_run import Camera, load_clip_set
from benchmarks._video_score import people_of_tracks, retrieval, summarize, tracker_id
from xmreid.errors import UserError

A, B = (0, 0, 10, 20), (100, 0, 10, 20)


def rows(*boxes: tuple) -> np.ndarray:
    return np.array([[f, i, *box] for f, i, box in boxes], np.float64).reshape(-1, 6)


def answer(*tracks: tuple) -> dict:
    """A query_video answer: ``(query track id, [(gallery camera, gallery track id), ...])`` per query track."""
    return {"tracks": [{"track_id": q, "results": [{"camera": c, "track_id": t} for c, t in ranked]}
                       for q, ranked in tracks]}


def cameras() -> list[Camera]:
    """Two RGB cameras and one IR camera, 2 frames each; people 1 (box A) and 2 (box B)."""
    gt = rows((1, 1, A), (1, 2, B), (2, 1, A), (2, 2, B))
    vis = np.array([1.0, 0.3, 1.0, 0.3])  # person 2 is mostly hidden
    cam1 = Camera(1, "rgb", Path("cam1.mp4"), Path("gt1"), gt, vis, frames=2,
                  pred=rows((1, 11, A), (1, 12, B), (2, 11, A), (2, 12, B)), wall_s=0.5, cpu_s=0.45,
                  ingest={"detector": {"frames": 2, "crops": 4}})
    # Camera 2: only person 2 is seen, and a false track 22 on nothing.
    cam2 = Camera(2, "rgb", Path("cam2.mp4"), Path("gt2"), gt, vis, frames=2,
                  pred=rows((1, 21, B), (2, 21, B), (2, 22, (300, 300, 10, 10))), wall_s=0.1,
                  ingest={"detector": {"frames": 2, "crops": 2}})
    ir = Camera(3, "ir", Path("cam3.mp4"), Path("gt3"), gt, vis, frames=2, pred=rows((1, 31, A), (2, 31, A), (1, 32, B)))
    ir.answers["detector"] = answer(
        ("cam3-abc-31", [(2, "cam2-x-22"), (1, "cam1-y-11")]),  # person 1: a false track first -> wrong
        ("cam3-abc-32", [(2, "cam2-x-21"), (1, "cam1-y-12"), (1, "cam1-y-11")]),  # person 2: right
    )
    ir.answers["gt"] = answer(
        ("cam3-abc-1", [(1, "cam1-y-1"), (2, "cam2-x-2"), (1, "cam1-y-2")]),  # right
        ("cam3-abc-2", [(1, "cam1-y-1"), (2, "cam2-x-2"), (1, "cam1-y-2")]),  # wrong; AP (1/2 + 2/3) / 2
    )
    return [cam1, cam2, ir]


def test_tracker_id_is_the_last_part_of_a_gallery_track_id() -> None:
    assert tracker_id("cam1-3f2a9c-17") == 17
    assert tracker_id("my-video-name-abc-5") == 5
    assert tracker_id(None) is None and tracker_id("no-number-here") is None


def test_people_of_tracks_by_path() -> None:
    cams = cameras()
    assert people_of_tracks(cams, "detector") == {1: {11: 1, 12: 2}, 2: {21: 2, 22: None}, 3: {31: 1, 32: 2}}
    assert people_of_tracks(cams, "gt")[2] == {1: 1, 2: 2}


def test_retrieval_by_hand() -> None:
    found = retrieval(cameras(), "detector")
    assert found["rank1"] == pytest.approx(0.5)
    # Person 1: hit at rank 2 of [none, 1] -> 1/2. Person 2: hits at ranks 1, 2 of [2, 2, 1] -> 1.
    assert found["map"] == pytest.approx((0.5 + 1.0) / 2)
    assert (found["queries"], found["gallery_tracks"]) == (2, 4)
    truth = retrieval(cameras(), "gt")
    assert truth["rank1"] == pytest.approx(0.5)
    assert truth["map"] == pytest.approx((1.0 + (1 / 2 + 2 / 3) / 2) / 2)


def test_summarize_headline_figures() -> None:
    r = summarize({"fps": 25, "frames": 2, "seed": 1, "ids": 2}, cameras())
    # Boxes over the three cameras: 12 ground truth; found 4 + 2 + 3 = 9 of them, 1 false box.
    assert r["det_recall"] == pytest.approx(9 / 12) and r["det_precision"] == pytest.approx(9 / 10)
    # Person 1 (visible): found 2 + 0 + 2 of 6 boxes; person 2 (hidden): 2 + 2 + 1 of 6.
    det = r["detection"]
    assert det["recall_visible"] == pytest.approx(4 / 6) and det["recall_occluded"] == pytest.approx(5 / 6)
    assert det["occluded_share"] == pytest.approx(0.5)
    assert r["fps_per_camera"] == {"1": pytest.approx(4.0), "2": pytest.approx(20.0)}
    assert r["fps_min"] == pytest.approx(4.0) and r["realtime_min"] == pytest.approx(4.0 / 25)
    assert r["track_rank1"] == pytest.approx(0.5) and r["track_rank1_gt"] == pytest.approx(0.5)
    assert r["id_switches"] == 0 and 0 < r["idf1"] < 1 and r["mota"] == pytest.approx(1 - (3 + 1) / 12)
    by_cam = {row["camera"]: row for row in r["cameras"]}
    assert by_cam[1]["idf1"] == 1 and by_cam[2]["det_recall"] == 0.5 and "ingest_fps" not in by_cam[3]
    assert by_cam[1]["cores"] == pytest.approx(0.9) and by_cam[2]["cores"] is None
    assert r["cores_max"] == pytest.approx(0.9)
    text = video.report({**r, "model": "m.onnx", "detector": "mog2", "threads": 1, "data_dir": "clips",
                         "data": {"seed": 1, "ids": 2, "frames": 2, "fps": 25, "width": 16, "height": 16}})
    assert "| mog2 detector + ByteTrack | 0.5 |" in text and "camera 1 4" in text


def test_clip_set_checks(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a synthetic video set"):
        load_clip_set(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"layout": "sysu"}))
    with pytest.raises(UserError, match="not video clips"):
        load_clip_set(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"layout": "video", "frames": 2, "cameras": {
        "1": {"modality": "rgb", "video": "cam1/cam1.mp4", "gt": "cam1/gt/gt.txt"}}}))
    with pytest.raises(UserError, match="camera 1 lacks"):
        load_clip_set(tmp_path)


def test_benchmark_end_to_end(tiny_onnx: Path, tmp_path: Path) -> None:
    from training.data.video import generate_video

    data = generate_video(tmp_path / "clips", ids=3, seed=13, seconds=2.0, width=320, height=240,
                          show_progress=False)
    out = tmp_path / "res" / "video.json"
    assert video.main(["--data", str(data), "--model", str(tiny_onnx), "--json", str(out),
                       "--gallery-dir", str(tmp_path / "galleries")]) == 0
    r = json.loads(out.read_text())["results"]
    for key in ("idf1", "mota", "det_recall", "det_precision", "track_rank1", "track_map", "track_rank1_gt",
                "track_map_gt"):
        assert r[key] is None or 0 <= r[key] <= 1 or key == "mota", key
    assert set(r["fps_per_camera"]) == {"1", "2", "4", "5"} and r["clip_fps"] == 25
    # Ground-truth path: one query track per person an IR camera sees, each with gallery tracks of its person
    # (every IR person walks past an RGB camera).
    meta = json.loads((data / "meta.json").read_text())
    truth = r["retrieval"]["gt"]
    assert truth["queries"] == sum(len(meta["cameras"][c]["people"]) for c in ("3", "6"))
    assert truth["no_person"] == 0 and truth["no_match"] == 0
    assert (out.parent / "video.md").is_file() and (out.parent / "video.png").is_file()
    assert not any((tmp_path / "galleries").iterdir())  # the galleries are temporary
