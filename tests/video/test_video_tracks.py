"""Tracking (ByteTrack on the detector's boxes, or given MOT tracks), MOT files, and the choice of crops."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from serving.indexing.video.crops import Candidate, TrackLog, choose, crop_region, cut, overlaps, touches_edge
from serving.indexing.video.decode import VideoSource, median_background
from serving.indexing.video.detect import BackgroundDetector
from serving.indexing.video.mot import read_mot, write_gap_rows, write_mot_rows
from serving.indexing.video.pipeline import run_tracks
from serving.indexing.video.tracking import ByteTrackSource, GivenTracks, Tracked
from xmreid.errors import UserError


def _mot_frame(rows: dict[int, list[tuple[int, np.ndarray]]], frame: int) -> tuple[list[int], np.ndarray]:
    pairs = rows.get(frame, [])
    return [t for t, _ in pairs], np.array([b for _, b in pairs]).reshape(-1, 4)


def _iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - IoU, NaN (no match) below IoU 0.5: motmetrics' ``iou_matrix`` (which numpy 2 no longer runs)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    distance = 1 - inter / (area(a)[:, None] + area(b)[None, :] - inter)
    distance[distance > 0.5] = np.nan
    return distance


def test_bytetrack_follows_each_walker_with_one_id(clip_dir: Path, tmp_path: Path) -> None:
    import motmetrics as mm

    detector = BackgroundDetector()
    detector.prime(median_background(clip_dir / "cam1.mp4"))
    source = VideoSource(clip_dir / "cam1.mp4")
    out = io.StringIO()
    finished = []
    stats = run_tracks(source, ByteTrackSource(detector, source.fps), finished.append, height=96, width=32, k=4,
                       mot_out=out)
    assert stats.frames == 60 and stats.tracks == 2 and len(finished) == 2
    (tmp_path / "pred.txt").write_text(out.getvalue())
    truth, pred = read_mot(clip_dir / "cam1.txt"), read_mot(tmp_path / "pred.txt")
    acc = mm.MOTAccumulator(auto_id=True)
    for frame in range(60):
        gt_ids, gt_boxes = _mot_frame(truth, frame)
        hyp_ids, hyp_boxes = _mot_frame(pred, frame)
        acc.update(gt_ids, hyp_ids, _iou_distance(gt_boxes, hyp_boxes))
    summary = mm.metrics.create().compute(acc, metrics=["idf1", "num_switches"])
    assert summary["idf1"].iloc[0] >= 0.9 and summary["num_switches"].iloc[0] == 0
    for track in finished:
        assert len(track.crops) == 4 and all(c.pixels.shape == (96, 32, 3) for c in track.crops)


def test_given_tracks_replace_detection_and_end_after_their_last_frame(clip_dir: Path) -> None:
    rows = read_mot(clip_dir / "cam1.txt")
    given = GivenTracks(rows)
    source = VideoSource(clip_dir / "cam1.mp4")
    finished = []
    stats = run_tracks(source, given, finished.append, height=96, width=32)
    assert sorted(t.track for t in finished) == [1, 2]
    assert {t.track: (t.first, t.last) for t in finished} == {1: (0, 59), 2: (5, 59)}
    assert stats.detections == sum(len(v) for v in rows.values())
    assert given.over(1, 10, 59) is False and given.over(1, 59, 60) is True  # gaps inside the life do not end it


def test_mot_round_trip_and_bad_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    write_mot_rows(out, 0, np.array([7]), np.array([[10, 20, 40, 100]], np.float32), np.array([0.5], np.float32))
    assert out.getvalue() == "1,7,10.0,20.0,30.0,80.0,0.500,-1,-1,-1\n"
    path = tmp_path / "t.txt"
    path.write_text(out.getvalue() + "2,8,0,0,10,10,0,1,1\n")  # consider flag 0: ignored
    assert list(read_mot(path)) == [0]
    np.testing.assert_allclose(read_mot(path)[0][0][1], [10, 20, 40, 100])
    path.write_text("1,2,three,4,5,6\n")
    with pytest.raises(UserError, match=r"t.txt:1 is not a MOT line"):
        read_mot(path)


def test_gap_rows_interpolate_between_the_ends() -> None:
    out = io.StringIO()
    start, end = (3, np.array([0, 0, 10, 40.0])), (6, np.array([30, 0, 40, 40.0]))
    assert write_gap_rows(out, 9, start, end, 0.75) == 2
    assert out.getvalue() == ("5,9,10.0,0.0,10.0,40.0,0.750,-1,-1,-1\n"
                              "6,9,20.0,0.0,10.0,40.0,0.750,-1,-1,-1\n")
    assert write_gap_rows(out, 9, start, (4, end[1]), 0.75) == 0  # adjacent frames: no gap


class _Frames:
    """A stand-in video of ``n`` blank frames."""

    def __init__(self, n: int) -> None:
        self.n, self.fps, self.width, self.height, self.frame_count, self.reconnects = n, 25.0, 64, 64, n, 0
        self.name = "fake.mp4"

    def frames(self):
        for i in range(self.n):
            yield i, np.zeros((64, 64, 3), np.uint8)


class _Script:
    """A track source that returns the boxes a script lists per frame (track id -> box), and ends tracks after
    ``patience`` unseen frames."""

    def __init__(self, script: dict[int, dict[int, list[float]]], patience: int) -> None:
        self.script, self.patience, self.detections = script, patience, 0

    def update(self, index: int, frame: np.ndarray) -> Tracked:
        rows = self.script.get(index, {})
        ids = np.array(list(rows), np.int64)
        xyxy = np.array(list(rows.values()), np.float32).reshape(-1, 4)
        return Tracked(ids, xyxy, np.full(len(ids), 0.9, np.float32))

    def over(self, track: int, last_seen: int, index: int) -> bool:
        return index - last_seen > self.patience


def test_mot_output_fills_the_frames_a_track_was_carried_over_and_nothing_else(tmp_path: Path) -> None:
    box = [10.0, 10.0, 20.0, 50.0]
    # Track 1: seen in frames 0-5, carried over 6-8 unseen, seen again 9-14. Track 2: frames 0-5, then over
    # (unseen for longer than the source keeps it), and track 2 again in 12-17 is a new life, not a gap to fill.
    script = {f: {} for f in range(18)}
    for f in [*range(6), *range(9, 15)]:
        script[f][1] = [b + 2 * f for b in box]
    for f in [*range(6), *range(12, 18)]:
        script[f][2] = [30.0, 10.0, 40.0, 50.0]
    out = io.StringIO()
    run_tracks(_Frames(18), _Script(script, patience=4), lambda t: None, height=96, width=32, mot_out=out)
    path = tmp_path / "pred.txt"
    path.write_text(out.getvalue())
    rows = read_mot(path)
    one = {f: b for f, boxes in rows.items() for t, b in boxes if t == 1}
    two = sorted(f for f, boxes in rows.items() for t, _ in boxes if t == 2)
    assert sorted(one) == list(range(15))
    np.testing.assert_allclose(one[7], [b + 14 for b in box])  # the straight line between frames 5 and 9
    assert two == [*range(6), *range(12, 18)]


def _candidate(frame: int, box: tuple[int, int, int, int], *, edge: bool = False, occluded: float = 0.0,
               sharp: float = 100.0) -> Candidate:
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    return Candidate(frame, box, area, sharp, edge, occluded, np.zeros((96, 32, 3), np.uint8))


def test_choose_spreads_over_the_life_and_avoids_cut_and_hidden_crops() -> None:
    person = (100, 50, 140, 160)
    cands = [_candidate(f, person) for f in range(0, 100, 5)]
    chosen = choose(cands, 4, 0, 99)
    assert len(chosen) == 4 and len({c.frame // 25 for c in chosen}) == 4  # one per quarter of the life
    # The first quarter's crops all touch the frame edge (the person walks in); the second's are half hidden.
    cands = ([_candidate(f, (0, 50, 30, 160), edge=True, sharp=1e4) for f in range(0, 25, 5)]
             + [_candidate(f, person, occluded=0.6, sharp=1e4) for f in range(25, 50, 5)]
             + [_candidate(f, person) for f in range(50, 100, 5)])
    chosen = choose(cands, 4, 0, 99)
    assert all(not c.edge and c.occluded == 0 for c in chosen) and len(chosen) == 4
    # Two people merged into one blob for a frame: wider than the track's usual box, so not chosen.
    cands = [_candidate(f, person) for f in range(0, 40, 5)] + [_candidate(40, (100, 50, 190, 160), sharp=1e6)]
    assert 40 not in [c.frame for c in choose(cands, 3, 0, 40)]
    # Nothing whole at all: still crops (a track is never left without a descriptor).
    assert len(choose([_candidate(0, person, edge=True)], 4, 0, 0)) == 1
    assert choose([], 4, 0, 10) == []


def test_track_log_keeps_an_even_bounded_sample() -> None:
    log = TrackLog(track=1, first=10, capacity=8)
    for frame in range(10, 1010):
        if log.seen(frame):
            log.add(_candidate(frame, (0, 0, 10, 30)))
    frames = [c.frame for c in log.candidates]
    assert len(frames) <= 8 and log.boxes == 1000 and log.last == 1009
    assert len(set(np.diff(frames))) == 1 and frames[0] == 10 and frames[-1] >= 1009 - log.stride


def test_crop_geometry_edges_and_overlaps() -> None:
    region = crop_region([100, 50, 130, 150], 3.0, (480, 640))
    left, top, right, bottom = region
    assert (bottom - top) == pytest.approx(3 * (right - left), abs=2) and top < 50 and bottom > 150
    assert crop_region([0, 0, 30, 100], 3.0, (480, 640))[:2] == (0, 0)  # clipped to the frame
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[50:150, 100:130] = (0, 0, 255)  # red in BGR
    crop = cut(frame, np.array([100, 50, 130, 150]), 96, 32)
    assert crop.shape == (96, 32, 3) and crop[48, 16].tolist() == [255, 0, 0]  # RGB out
    assert touches_edge(np.array([0, 10, 20, 50]), (240, 320)) and not touches_edge(np.array([5, 5, 20, 50]),
                                                                                   (240, 320))
    covered = overlaps(np.array([[0, 0, 10, 10], [5, 0, 15, 10], [50, 50, 60, 60]], np.float32))
    np.testing.assert_allclose(covered, [0.5, 0.5, 0.0])


def test_appearance_guard_cuts_a_track_that_passes_to_someone_else() -> None:
    from serving.indexing.video.appearance import AppearanceGuard

    guard = AppearanceGuard()
    red, blue = np.zeros((240, 320, 3), np.uint8), np.zeros((240, 320, 3), np.uint8)
    red[50:170, 100:140] = (0, 0, 255)
    blue[50:170, 100:140] = (255, 0, 0)
    box, wide = np.array([[100, 50, 140, 170]], np.float32), np.array([[100, 50, 190, 170]], np.float32)
    clear, covered = np.zeros(1, np.float32), np.full(1, 0.5, np.float32)
    ids = [int(guard.ids(red, np.array([3]), box, clear)[0]) for _ in range(10)]
    # Merged with someone (a wide blob) or half hidden: whatever it looks like, the track stays.
    ids += [int(guard.ids(blue, np.array([3]), wide, clear)[0]) for _ in range(10)]
    ids += [int(guard.ids(blue, np.array([3]), box, covered)[0]) for _ in range(10)]
    assert len(set(ids)) == 1 and guard.cuts == 0
    # A whole, clear person of other colours for five frames: someone else, so a new id from then on.
    after = [int(guard.ids(blue, np.array([3]), box, clear)[0]) for _ in range(8)]
    assert after[:4] == [ids[0]] * 4 and len(set(after[4:])) == 1 and after[4] != ids[0] and guard.cuts == 1
