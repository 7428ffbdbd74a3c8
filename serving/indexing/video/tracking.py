"""Per-camera tracks: a detector's boxes linked over frames by ByteTrack, or tracks given in a MOT file.

The linking is the ``trackers`` library's ByteTrack (Zhang et al., ECCV 2022) on ``supervision.Detections``:
boxes above ``high`` confidence are matched to the Kalman-predicted tracks first, the doubtful ones
(:data:`serving.indexing.video.detect.DOUBTFUL`) only continue a track in a second pass, and only sure boxes
start one; a track must be seen ``confirm`` frames in a row before it gets an id, and survives ``lost_s``
seconds unseen (a person passing behind another). Where a track passes from one person to another (motion
cannot tell them apart when they meet), :mod:`~serving.indexing.video.appearance` cuts it in two. Both
sources say after how many unseen frames a track is over (:meth:`TrackSource.over`), so the caller can finish
it and free its memory while the video goes on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.indexing.video.appearance import AppearanceGuard
from serving.indexing.video.crops import overlaps
from serving.indexing.video.detect import Boxes, Detector


@dataclass
class Tracked:
    """The tracked boxes of one frame: ``ids`` int64 ``[N]``, ``xyxy`` float32 ``[N, 4]``, ``confidence`` ``[N]``."""

    ids: np.ndarray
    xyxy: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


class TrackSource(Protocol):
    """Tracked boxes frame by frame."""

    #: Detections seen so far (boxes before tracking; for a given-tracks source, its boxes).
    detections: int

    def update(self, index: int, frame: np.ndarray) -> Tracked:
        """The tracked boxes of frame ``index``."""
        ...

    def over(self, track: int, last_seen: int, index: int) -> bool:
        """Whether ``track``, last seen in frame ``last_seen``, can no longer continue at frame ``index``."""
        ...


@dataclass(frozen=True)
class TrackerSettings:
    """ByteTrack's knobs (module docstring): ``lost_s`` seconds a lost track is kept, ``confirm`` frames before
    an id is given, ``min_iou`` to match a box to a track, ``high`` / ``start`` confidence of the first pass
    and of a box that may start a track; ``appearance``: cut a track where it passes to someone else
    (:class:`~serving.indexing.video.appearance.AppearanceGuard`)."""

    lost_s: float = 1.5
    confirm: int = 3
    min_iou: float = 0.1
    high: float = 0.6
    start: float = 0.7
    appearance: bool = True


class ByteTrackSource:
    """A :class:`Detector` followed by ``trackers.ByteTrackTracker`` (one per camera video).

    Args:
        detector: finds the boxes.
        fps: the video's frame rate (ByteTrack's buffer is in 30 fps frames).
        settings: the tracker's knobs.
    """

    def __init__(self, detector: Detector, fps: float, settings: TrackerSettings = TrackerSettings()) -> None:
        from trackers import ByteTrackTracker

        self.detector = detector
        self.detections = 0
        buffer_30fps = max(1, round(settings.lost_s * 30))
        self._tracker = ByteTrackTracker(lost_track_buffer=buffer_30fps, frame_rate=fps,
                                         track_activation_threshold=settings.start,
                                         minimum_consecutive_frames=settings.confirm,
                                         minimum_iou_threshold=settings.min_iou,
                                         high_conf_det_threshold=settings.high)
        self.guard = AppearanceGuard() if settings.appearance else None
        # One frame more than ByteTrack keeps a lost track, so a track it may still revive is never finished early.
        self.patience = round(settings.lost_s * fps) + 2

    def over(self, track: int, last_seen: int, index: int) -> bool:
        """Unseen for longer than ByteTrack keeps a lost track."""
        return index - last_seen > self.patience

    def update(self, index: int, frame: np.ndarray) -> Tracked:
        """Detect in ``frame`` and link the boxes to the camera's tracks; unconfirmed boxes are left out."""
        import supervision as sv

        boxes: Boxes = self.detector.detect(frame)
        self.detections += len(boxes)
        detections = sv.Detections(xyxy=boxes.xyxy.astype(np.float32),
                                   confidence=boxes.confidence.astype(np.float32),
                                   class_id=np.zeros(len(boxes), dtype=int))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracked = self._tracker.update(detections)
        ids = np.asarray(tracked.tracker_id if tracked.tracker_id is not None else [], dtype=np.int64)
        keep = ids >= 0
        confidence = tracked.confidence if tracked.confidence is not None else np.ones(len(ids), np.float32)
        ids, xyxy = ids[keep], np.asarray(tracked.xyxy, np.float32).reshape(-1, 4)[keep]
        if self.guard is not None and len(ids):
            ids = self.guard.ids(frame, ids, xyxy, overlaps(xyxy))
        return Tracked(ids, xyxy, np.asarray(confidence, np.float32)[keep])


class GivenTracks:
    """Tracks read from a MOT file (``--tracks-from``): no detection, no tracking (a measuring aid).

    Args:
        boxes: ``{frame (from 0): [(track id, xyxy), ...]}`` (:func:`serving.indexing.video.mot.read_mot`).
    """

    def __init__(self, boxes: dict[int, list[tuple[int, np.ndarray]]]) -> None:
        self._boxes = boxes
        self.detections = 0
        self._last = {}
        for frame, rows in boxes.items():
            for track, _ in rows:
                self._last[track] = max(frame, self._last.get(track, -1))

    def over(self, track: int, last_seen: int, index: int) -> bool:
        """Past the last frame the file lists the track in (gaps before it do not end it)."""
        return index > self._last.get(track, last_seen)

    def update(self, index: int, frame: np.ndarray) -> Tracked:
        """The boxes the file lists for frame ``index``, clipped to the frame."""
        rows = self._boxes.get(index, [])
        self.detections += len(rows)
        if not rows:
            return Tracked(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
        height, width = frame.shape[:2]
        xyxy = np.stack([box for _, box in rows]).astype(np.float32)
        xyxy[:, [0, 2]] = xyxy[:, [0, 2]].clip(0, width)
        xyxy[:, [1, 3]] = xyxy[:, [1, 3]].clip(0, height)
        ok = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        ids = np.array([track for track, _ in rows], np.int64)
        return Tracked(ids[ok], xyxy[ok], np.ones(int(ok.sum()), np.float32))
