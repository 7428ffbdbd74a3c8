"""What ingestion and video queries set up alike: the camera, threads, the embedder, the gallery, the clock
and the source of tracks; each checked here, with one sentence for what is wrong."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serving.indexing.video.decode import VideoSource, is_stream
from serving.indexing.video.detect import SUBTRACTORS, BackgroundDetector, Detector
from serving.indexing.video.mot import read_mot
from serving.indexing.video.tracking import ByteTrackSource, GivenTracks, TrackSource
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)


def check_camera(camera: Any) -> int:
    """The camera as an int (the gallery's camera numbers), or one sentence."""
    try:
        if isinstance(camera, bool) or camera is None or str(camera).strip() == "":
            raise ValueError
        return int(str(camera).strip())
    except ValueError:
        raise UserError(f"--camera must be the camera's number (an integer, as in the gallery), got {camera!r}") \
            from None


def set_threads(threads: int) -> None:
    """Let OpenCV use ``threads`` threads (the embedder gets the same number when it is loaded)."""
    import cv2

    if threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    cv2.setNumThreads(int(threads))


def embedder(model: Any, backend: str, threads: int) -> Any:
    """A loaded embedder: ``model`` itself when it is one, else the artifact loaded with ``threads`` threads."""
    from serving.embedders import Embedder, load_embedder

    if isinstance(model, Embedder):
        return model
    path = Path(model)
    options = {"intra_op_threads": threads} if path.suffix.lower() == ".onnx" and backend in ("auto", "onnxruntime") \
        else {}
    return load_embedder(path, backend=backend, **options)


def open_gallery_read(gallery: Any, embedder: Any) -> Any:
    """A gallery to search: ``gallery`` itself when it is open, else the directory loaded read-only.

    Raises:
        UserError: not a gallery, a gallery of another model (exit 1), or a damaged one (exit 2).
    """
    if hasattr(gallery, "search"):
        return gallery
    from index import Gallery
    from index.errors import CorruptGalleryError, GalleryError
    from index.manifest import MANIFEST

    directory = Path(gallery)
    if not (directory / MANIFEST).is_file():
        raise UserError(f"--gallery {directory} is not a gallery (no {MANIFEST}); build one with "
                        f"`python -m serving ingest` or `python -m serving index`")
    try:
        return Gallery.load(directory, fingerprint=embedder.fingerprint, family=getattr(embedder, "family", None),
                            dim=embedder.dim, read_only=True)
    except CorruptGalleryError as exc:
        raise UserError(f"cannot search the gallery in {directory}: {exc}", exit_code=EXIT_DAMAGED) from exc
    except GalleryError as exc:
        raise UserError(f"cannot search the gallery in {directory} with this model: {exc}") from exc


def start_time(value: float | str | None, video: str) -> float:
    """The wall time (Unix seconds) of frame 0: ``value`` (seconds or ISO-8601), else the file's modification
    time, else (a stream) now; the default is logged, since every timestamp follows from it."""
    if value is None:
        if is_stream(video):
            now = time.time()
            logger.info("no --start-time: timing %s from now (%s)", video, _iso(now))
            return now
        mtime = Path(video).stat().st_mtime
        logger.info("no --start-time: timing %s from its modification time (%s)", Path(video).name, _iso(mtime))
        return mtime
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--start-time {value!r} is neither Unix seconds nor an ISO-8601 time "
                        f"(e.g. 2024-05-01T08:30:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")


def build_detector(spec: str | Path, *, threads: int = 1) -> Detector:
    """The detector ``--detector`` names: ``mog2`` / ``knn`` (background subtraction) or an ONNX file.

    Raises:
        UserError: neither a subtractor name nor an existing ``.onnx`` file (the message lists the choices).
    """
    text = str(spec)
    if text.lower() in SUBTRACTORS:
        return BackgroundDetector(text.lower())
    path = Path(text)
    if path.suffix.lower() == ".onnx":
        from serving.indexing.video.onnx_detect import YoloOnnxDetector

        return YoloOnnxDetector(path, threads=threads)
    raise UserError(f"unknown detector {text!r}; valid: {', '.join(SUBTRACTORS)}, or a YOLO-layout model.onnx")


def track_source(detector: Any, tracks_from: str | Path | None, source: VideoSource,
                 threads: int = 1) -> TrackSource:
    """Tracked boxes for ``source``: the MOT file ``tracks_from`` when given, else ``detector`` + ByteTrack.

    ``detector`` is a name or ONNX path (:func:`build_detector`) or a
    callable returning a fresh :class:`~serving.indexing.video.detect.Detector` (a detector keeps per-video
    state, so each video gets a new one).
    """
    if tracks_from is not None:
        return GivenTracks(read_mot(tracks_from))
    made = detector() if callable(detector) else build_detector(detector, threads=threads)
    if hasattr(made, "prime") and not source.stream:
        from serving.indexing.video.decode import median_background

        background = median_background(source.name)
        if background is not None:
            made.prime(background)
    return ByteTrackSource(made, source.fps)
