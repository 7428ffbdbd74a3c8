"""One video through the front half of the pipeline: frames -> tracked boxes -> each track's chosen crops.

Shared by ingestion (the crops are indexed) and video queries (they are searched). Frames are read once and
dropped: a track keeps only its sample of candidate crops (:mod:`serving.indexing.video.crops`), and a track
that is over (:meth:`~serving.indexing.video.tracking.TrackSource.over`) is handed to ``on_track`` at once,
while the video goes on, so memory stays bounded on a long video or a stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from serving.indexing.video.crops import DEFAULT_K, Candidate, TrackLog, choose, observe, overlaps
from serving.indexing.video.decode import VideoSource
from serving.indexing.video.mot import write_gap_rows, write_mot_rows
from serving.indexing.video.tracking import TrackSource

logger = logging.getLogger(__name__)

#: A track with fewer boxes than this is dropped as noise (a flicker of the background model).
MIN_BOXES = 5


@dataclass
class FinishedTrack:
    """A track that is over: the tracker's id, its life and its chosen crops (frame order)."""

    track: int
    first: int
    last: int
    boxes: int
    crops: list[Candidate]


@dataclass
class VideoStats:
    """What one pass over a video saw."""

    frames: int = 0
    detections: int = 0
    boxes: int = 0
    tracks: int = 0
    dropped_tracks: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    reconnects: int = 0
    width: int = 0
    height: int = 0
    track_ids: list[int] = field(default_factory=list)

    @property
    def frames_per_s(self) -> float:
        """Processing speed (frames per second of wall time)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def run_tracks(source: VideoSource, tracks: TrackSource, on_track: Callable[[FinishedTrack], None], *,
               height: int, width: int, k: int = DEFAULT_K, min_boxes: int = MIN_BOXES,
               mot_out: TextIO | None = None, show_progress: bool = False, label: str = "") -> VideoStats:
    """Track people through ``source`` and hand each finished track with its chosen crops to ``on_track``.

    Args:
        source: the opened video.
        tracks: boxes per frame (a detector and ByteTrack, or given tracks).
        on_track: called once per track with at least ``min_boxes`` boxes, as soon as the track is over.
        height: the model's input height (crops are cut and resized for it).
        width: the model's input width.
        k: crops chosen per track.
        min_boxes: shorter tracks are dropped (counted in ``dropped_tracks``).
        mot_out: where the tracked boxes are written in MOT format, if anywhere (with the frames a track was
            carried over without a box filled in: :func:`~serving.indexing.video.mot.write_gap_rows`).
        show_progress: draw a tqdm bar (frames).
        label: the bar's label.

    Returns:
        The pass's :class:`VideoStats` (``seconds`` covers decoding through ``on_track``).
    """
    stats = VideoStats(fps=source.fps, width=source.width, height=source.height)
    logs: dict[int, TrackLog] = {}
    started = time.perf_counter()
    bar = tqdm(total=source.frame_count, unit="frame", desc=label or "video", disable=not show_progress,
               leave=False)

    def finish(log: TrackLog) -> None:
        del logs[log.track]
        if log.boxes < min_boxes:
            stats.dropped_tracks += 1
            return
        stats.tracks += 1
        stats.track_ids.append(log.track)
        on_track(FinishedTrack(log.track, log.first, log.last, log.boxes,
                               choose(log.candidates, k, log.first, log.last)))

    try:
        for index, frame in source.frames():
            tracked = tracks.update(index, frame)
            stats.frames += 1
            stats.boxes += len(tracked)
            if len(tracked):
                covered = overlaps(tracked.xyxy)
                for j, track in enumerate(tracked.ids.tolist()):
                    log = logs.get(track)
                    if log is None:
                        log = logs[track] = TrackLog(track, index)
                    elif mot_out is not None:  # fill the frames the tracker carried it over without a box
                        write_gap_rows(mot_out, track, (log.last, log.last_box), (index, tracked.xyxy[j]),
                                       float(tracked.confidence[j]))
                    observe(log, frame, index, tracked.xyxy[j], float(covered[j]), height, width)
                if mot_out is not None:
                    write_mot_rows(mot_out, index, tracked.ids, tracked.xyxy, tracked.confidence)
            for log in [g for g in logs.values() if tracks.over(g.track, g.last, index)]:
                finish(log)
            bar.update(1)
        for log in sorted(logs.values(), key=lambda g: g.track):
            finish(log)
    finally:
        bar.close()
    stats.detections = tracks.detections
    stats.reconnects = source.reconnects
    stats.seconds = time.perf_counter() - started
    return stats
