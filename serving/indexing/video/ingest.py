"""``ingest_video``: camera video in, the chosen crops of every track embedded and added to a gallery.

Each crop is indexed with its ``camera``, a ``track_id`` unique across videos and runs
(``<video stem>-<content hash>-<tracker id>``, :func:`track_name`), its ``timestamp`` (start time + frame / fps)
and a ``source`` naming the video, the frame (from 0) and the box (``left,top,width,height``):
``/videos/cam1.mp4#frame=120&box=10,20,50,160``. ``extra`` carries the track's life (first and last frame and
time), so a search can say when the person was seen.

**Resuming.** Crops are embedded in batches as their tracks end and the gallery is saved every
``save_every`` batches and at the end of each video, when the video is also recorded as done in the gallery's
notes (by content, :func:`~serving.indexing.video.decode.video_identity`). A rerun skips the videos recorded
as done; a video that was interrupted is read again, and since decoding, detection and tracking are
deterministic it yields the same track ids and sources, so the crops saved before the interruption are
recognised by their ``source`` and not added twice.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from serving.indexing.common import open_gallery, reserve_gallery, save_gallery
from serving.indexing.video import setup
from serving.indexing.video.crops import DEFAULT_K
from serving.indexing.video.decode import Reconnect, VideoSource, is_stream, video_files, video_identity
from serving.indexing.video.pipeline import FinishedTrack, VideoStats, run_tracks
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

#: The gallery note that lists the videos ingested completely (JSON: content hash -> what was indexed).
DONE_NOTE = "ingested_videos"


def track_name(video: str | Path, identity: str, track: int) -> str:
    """The gallery ``track_id`` of tracker id ``track`` in a video: ``<stem>-<content hash>-<track>``."""
    stem = Path(str(video).split("?")[0].rstrip("/")).stem or "stream"
    return f"{stem}-{identity}-{track}"


def crop_source(video: str, frame: int, box: tuple[int, int, int, int]) -> str:
    """``<video>#frame=<n>&box=<left>,<top>,<width>,<height>`` (what the gallery's ``source`` holds)."""
    left, top, right, bottom = box
    return f"{video}#frame={frame}&box={left},{top},{right - left},{bottom - top}"


def parse_source(source: str) -> tuple[str, int, tuple[int, int, int, int]] | None:
    """``(video, frame, (left, top, right, bottom))`` of a :func:`crop_source` string, or None for another."""
    video, _, fragment = source.rpartition("#")
    try:
        fields = dict(part.split("=", 1) for part in fragment.split("&"))
        left, top, width, height = (int(v) for v in fields["box"].split(","))
        return video, int(fields["frame"]), (left, top, left + width, top + height)
    except (ValueError, KeyError):
        return None


def ingest_video(video: str | Path, camera: int, *, model: Any, gallery: Any, detector: Any = "mog2",
                 tracks_from: str | Path | None = None, start_time: float | str | None = None,
                 mot_out: str | Path | None = None, threads: int = 1, k: int = DEFAULT_K, batch_size: int = 32,
                 save_every: int = 20, backend: str = "auto", kind: str = "flat", show_progress: bool = False,
                 reconnect: Reconnect | None = None, opener: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Detect, track and index the people of a video file, a folder of videos, or a stream.

    Args:
        video: a video file, a folder (searched recursively; each video is ingested once) or a stream URL.
        camera: the camera the video comes from (an integer, as in the gallery).
        model: the exported model (``.onnx`` / ``.plan`` / ``.pt``) or a loaded
            :class:`~serving.embedders.Embedder`.
        gallery: the gallery directory (created, or added to: it must belong to ``model``), or an open
            ``index.Gallery`` (saved to its own directory, if it has one).
        detector: ``mog2`` / ``knn`` (background subtraction), a YOLO-layout ``.onnx``, or a
            :class:`~serving.indexing.video.detect.Detector` factory ``() -> Detector``.
        tracks_from: a MOT file of tracks to use instead of detection and tracking (one video only).
        start_time: the wall time of frame 0 (Unix seconds or ISO-8601); default the file's modification
            time (a stream: now), said in the log.
        mot_out: write the tracked boxes in MOT format here (a folder: one ``<stem>.txt`` per video).
        threads: threads for OpenCV and the embedder.
        k: crops chosen per track.
        batch_size: crops per embedder call.
        save_every: save the gallery every this many batches (and at the end of each video).
        backend: embedder backend when ``model`` is a path.
        kind: index kind of a new gallery.
        show_progress: draw a progress bar.
        reconnect: how a stream that drops is reopened.
        opener: ``source -> capture`` (tests inject fake captures).

    Returns:
        The report: totals ``frames``, ``detections``, ``tracks``, ``crops``, ``seconds``, ``fps`` (frames
        processed per second) and ``videos`` (one entry per video, with its ``status``).

    Raises:
        UserError: a missing or unreadable video (exit status 2 for a damaged file or unknown codec), a bad
            option, a gallery of another model or locked by another process.
    """
    camera = setup.check_camera(camera)
    if k < 1 or batch_size < 1 or save_every < 0:
        raise UserError(f"k and batch size must be >= 1 and save_every >= 0, got {k}, {batch_size}, {save_every}")
    videos, root = _videos(video)
    if tracks_from is not None and len(videos) != 1:
        raise UserError("--tracks-from gives the tracks of one video; give --video one file, not a folder")
    if mot_out is not None and root is not None:
        Path(mot_out).mkdir(parents=True, exist_ok=True)
    setup.set_threads(threads)
    owned = not hasattr(gallery, "add")
    with ExitStack() as stack:
        gallery_dir = Path(gallery) if owned else getattr(gallery, "directory", None)
        stack.enter_context(reserve_gallery(gallery_dir) if owned else nullcontext())
        embedder = setup.embedder(model, backend, threads)
        store = open_gallery(gallery_dir, embedder, kind) if owned else gallery
        if owned:
            stack.callback(store.close)
        run = _Run(store, gallery_dir, embedder, camera, k=k, batch_size=batch_size, save_every=save_every,
                   threads=threads)
        report = {"camera": camera, "videos": [], "gallery": str(gallery_dir) if gallery_dir else None}
        started = time.perf_counter()
        for path in videos:
            out = None if mot_out is None else (Path(mot_out) / f"{Path(path).stem}.txt" if root else Path(mot_out))
            report["videos"].append(run.video(path, detector=detector, tracks_from=tracks_from,
                                              start_time=start_time, mot_out=out, show_progress=show_progress,
                                              reconnect=reconnect, opener=opener, in_folder=root is not None))
        report["seconds"] = time.perf_counter() - started
    done = [v for v in report["videos"] if v["status"] == "ingested"]
    for key in ("frames", "detections", "tracks", "crops"):
        report[key] = sum(v[key] for v in done)
    busy = sum(v["seconds"] for v in done)
    report["fps"] = report["frames"] / busy if busy > 0 else 0.0
    report["gallery_size"] = len(store)
    report["failed"] = [v["video"] for v in report["videos"] if v["status"].startswith("failed")]
    return report


def _videos(video: str | Path) -> tuple[list[str], Path | None]:
    """The videos to ingest and, for a folder, the folder."""
    if is_stream(video):
        return [str(video)], None
    path = Path(video)
    if path.is_dir():
        files = video_files(path)
        if not files:
            logger.warning("no video files under %s", path)
        return [str(p.resolve()) for p in files], path
    if not path.exists():
        raise UserError(f"video not found: {video}")
    return [str(path.resolve())], None


class _Run:
    """One ingestion into an open gallery: videos one after another, crops embedded in batches as tracks end."""

    def __init__(self, store: Any, gallery_dir: Path | None, embedder: Any, camera: int, *, k: int,
                 batch_size: int, save_every: int, threads: int) -> None:
        self.store, self.gallery_dir, self.embedder, self.camera = store, gallery_dir, embedder, camera
        self.k, self.batch_size, self.save_every, self.threads = k, batch_size, save_every, threads
        self.pending: list[tuple[np.ndarray, dict[str, Any]]] = []
        self.batches = 0
        self.done: dict[str, Any] = json.loads(getattr(store, "notes", {}).get(DONE_NOTE, "{}"))

    def video(self, video: str, *, detector: Any, tracks_from: Any, start_time: Any, mot_out: Path | None,
              show_progress: bool, reconnect: Reconnect | None, opener: Any, in_folder: bool) -> dict[str, Any]:
        """Ingest one video; returns its report entry (``status``: ingested, already ingested, or failed: why)."""
        entry: dict[str, Any] = {"video": video, "camera": self.camera}
        identity = video_identity(video)
        entry["video_id"] = identity
        if identity in self.done and not is_stream(video):
            logger.info("%s was ingested before (%s); skipping it", video, self.done[identity].get("video"))
            return {**entry, "status": "already ingested"}
        try:
            source = VideoSource(video, reconnect=reconnect, **({"opener": opener} if opener else {}))
        except UserError as exc:
            if not in_folder:
                raise
            logger.error("skipping %s: %s", video, exc)
            return {**entry, "status": f"failed: {exc}"}
        t0 = setup.start_time(start_time, video)
        # A stream is a new recording each run: its name carries the run's start, so its track ids and sources
        # never meet those of an earlier run (a file is named by its content, so a rerun meets its own).
        name = f"{video}@{t0:.3f}" if is_stream(video) else video
        identity = entry["video_id"] = video_identity(name)
        begun = time.perf_counter()  # the video's time includes learning its background
        tracks = setup.track_source(detector, tracks_from, source, self.threads)
        added_before = len(self.store)

        def on_track(track: FinishedTrack) -> None:
            track_id = track_name(video, identity, track.track)
            life = {"first_frame": track.first, "last_frame": track.last, "fps": source.fps,
                    "first_seen": t0 + track.first / source.fps, "last_seen": t0 + track.last / source.fps,
                    "video": name, "video_id": identity}
            for crop in track.crops:
                meta = {"camera": self.camera, "person_label": None, "track_id": track_id,
                        "source": crop_source(name, crop.frame, crop.box),
                        "timestamp": t0 + crop.frame / source.fps,
                        "extra": {**life, "frame": crop.frame, "box": list(crop.box)}}
                self.pending.append((crop.pixels, meta))
            if len(self.pending) >= self.batch_size:
                self.flush()

        try:
            with open(mot_out, "w") if mot_out is not None else nullcontext() as mot:
                stats = run_tracks(source, tracks, on_track, height=self.embedder.height,
                                   width=self.embedder.width, k=self.k, mot_out=mot, show_progress=show_progress,
                                   label=Path(video).name)
                self.flush()
        except KeyboardInterrupt:
            logger.warning("interrupted: saving the %d crop(s) indexed from %s so far; rerun the same command to "
                           "resume", len(self.store) - added_before, video)
            self.save()
            raise
        crops = len(self.store) - added_before
        self.done[identity] = {"video": video, "camera": self.camera, "tracks": stats.tracks, "crops": crops}
        if not is_stream(video) and hasattr(self.store, "set_note"):
            self.store.set_note(DONE_NOTE, json.dumps(self.done, sort_keys=True))
        self.save()
        stats.seconds = time.perf_counter() - begun
        entry.update(_entry(stats, crops, t0), status="ingested")
        logger.info("%s", summary_line(entry))
        return entry

    def flush(self) -> None:
        """Embed the pending crops and add those not in the gallery yet (a resumed video's saved ones are)."""
        while self.pending:
            batch, self.pending = self.pending[:self.batch_size], self.pending[self.batch_size:]
            known = self.store.find_sources([m["source"] for _, m in batch])
            batch = [(p, m) for p, m in batch if m["source"] not in known]
            if not batch:
                continue
            vectors = self.embedder.embed(np.stack([p for p, _ in batch]))
            self.store.add(vectors, [m for _, m in batch])
            self.batches += 1
            if self.save_every and self.batches % self.save_every == 0:
                self.save()

    def save(self) -> None:
        if self.gallery_dir is not None:
            save_gallery(self.store, self.gallery_dir)


def _entry(stats: VideoStats, crops: int, t0: float) -> dict[str, Any]:
    return {"frames": stats.frames, "detections": stats.detections, "tracks": stats.tracks, "crops": crops,
            "dropped_tracks": stats.dropped_tracks, "seconds": stats.seconds, "fps": stats.frames_per_s,
            "video_fps": stats.fps, "reconnects": stats.reconnects, "start_time": t0,
            "width": stats.width, "height": stats.height}


def summary_line(entry: dict[str, Any]) -> str:
    """One line per video: frames, detections, tracks, crops indexed, speed (or why nothing was)."""
    name = os.path.basename(str(entry["video"]).split("#")[0]) or entry["video"]
    status = entry["status"]
    if status != "ingested":
        return f"{name}: {status}"
    people = "" if entry["tracks"] else " (no people found)"
    return (f"{name}: {entry['frames']} frames, {entry['detections']} detections, {entry['tracks']} tracks{people}, "
            f"{entry['crops']} crops indexed in {entry['seconds']:.1f} s ({entry['fps']:.1f} frames/s)")
