"""Read camera video with OpenCV: a file, a folder of files, or a stream that is reopened when it drops.

A file that OpenCV cannot open, or whose first frame it cannot decode (an unsupported codec), is one
sentence (:class:`~xmreid.errors.UserError`, exit status 2). A file that opens and holds no frames is an
empty clip, not an error. A stream (``rtsp://``, ``http://`` ...) that stops delivering frames is released
and reopened with exponential backoff, a bounded number of times in a row, each try logged; the frame
numbers go on counting across the gap, so times and track ids stay monotonic.

A video is identified by its content (:func:`video_identity`: size and a hash of its first and last MiB), so
a folder that is moved or renamed still resumes, and two different clips with the same name never share
track ids.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.core import opencv_limits  # noqa: F401  (OpenCV's decoder limits, before cv2 loads)
from xmreid.errors import EXIT_DAMAGED, UserError

logger = logging.getLogger(__name__)

#: Suffixes a folder of videos is searched for (lower case).
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".ts", ".wmv")
_STREAM = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
#: fps assumed when a video does not say (some streams report 0).
DEFAULT_FPS = 25.0
_HASH_SPAN = 1 << 20


def is_stream(video: str | Path) -> bool:
    """Whether ``video`` is a URL (``rtsp://``, ``http://``, ``file://`` ...) rather than a local path."""
    return bool(_STREAM.match(str(video)))


def video_files(directory: Path) -> list[Path]:
    """The videos under ``directory`` (recursively), sorted by relative path."""
    return sorted((p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES),
                  key=lambda p: p.relative_to(directory).as_posix())


def video_identity(video: str | Path) -> str:
    """A short content hash naming a video file (a URL: a hash of the URL); stable across moves and renames."""
    digest = hashlib.sha256()
    if is_stream(video):
        digest.update(str(video).encode())
        return digest.hexdigest()[:10]
    path = Path(video)
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(_HASH_SPAN))
        if size > 2 * _HASH_SPAN:
            f.seek(size - _HASH_SPAN)
            digest.update(f.read(_HASH_SPAN))
    return digest.hexdigest()[:10]


def _open_capture(source: str) -> Any:
    import cv2

    return cv2.VideoCapture(source)


@dataclass
class Reconnect:
    """How a dropped stream is reopened: at most ``retries`` tries in a row, waiting ``first_wait_s`` doubling up
    to ``max_wait_s`` before each; a try that yields a frame resets the count."""

    retries: int = 5
    first_wait_s: float = 0.5
    max_wait_s: float = 30.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait before try ``attempt`` (1, 2, ...)."""
        return min(self.max_wait_s, self.first_wait_s * 2 ** (attempt - 1))


class VideoSource:
    """Frames of one video file or stream, with its fps and size.

    Args:
        video: a file path or a stream URL.
        reconnect: how a stream that drops is reopened (files are read once).
        opener: ``source -> capture`` with OpenCV's ``VideoCapture`` interface (tests inject failing ones).
        sleep: the wait between reconnection tries (tests pass a recorder).

    Raises:
        UserError: the file is missing, cannot be opened or its frames cannot be decoded (exit status 2),
            or the stream cannot be opened at all.
    """

    def __init__(self, video: str | Path, *, reconnect: Reconnect | None = None,
                 opener: Callable[[str], Any] = _open_capture, sleep: Callable[[float], None] = time.sleep) -> None:
        self.name = str(video)
        self.stream = is_stream(video)
        self.reconnect = reconnect or Reconnect()
        self.reconnects = 0
        self._opener, self._sleep = opener, sleep
        if not self.stream and not Path(video).is_file():
            raise UserError(f"video not found: {video}")
        self._capture = self._opener(self.name)
        if not self._capture.isOpened():
            self._capture.release()
            if self.stream:
                raise UserError(f"cannot open the stream {video}: OpenCV could not connect to it or read its format")
            raise UserError(f"cannot read {video}: it is not a video OpenCV can open (damaged file or unknown "
                            f"container)", exit_code=EXIT_DAMAGED)
        import cv2

        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(fps) or fps <= 0 or fps > 1000:
            logger.warning("%s does not state its frame rate; assuming %.0f fps", video, DEFAULT_FPS)
            fps = DEFAULT_FPS
        self.fps = fps
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if not self.stream and count and count > 0 else None
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(frame number from 0, BGR frame)`` until the file ends or the stream cannot be reopened.

        Raises:
            UserError: a file whose frames cannot be decoded at all (an unsupported codec; exit status 2).
        """
        index = failures = 0
        try:
            while True:
                ok, frame = self._capture.read()
                if ok and frame is not None:
                    failures = 0
                    yield index, frame
                    index += 1
                    continue
                if not self.stream:
                    if index == 0 and self.frame_count:
                        raise UserError(f"cannot decode {self.name}: OpenCV opened it but could not decode a frame "
                                        f"(unsupported codec?)", exit_code=EXIT_DAMAGED)
                    return
                if failures >= self.reconnect.retries:
                    logger.error("stream %s gave no frame after %d reopening tries; stopping at frame %d",
                                 self.name, failures, index)
                    return
                failures += 1
                self._reopen(index, failures)
        finally:
            self._capture.release()

    def _reopen(self, index: int, attempt: int) -> None:
        """Release the dropped stream, wait (doubling with each failed try) and open it again."""
        self._capture.release()
        wait = self.reconnect.wait(attempt)
        logger.warning("stream %s dropped after frame %d; reopening in %.1f s (try %d of %d)",
                       self.name, index, wait, attempt, self.reconnect.retries)
        self._sleep(wait)
        self._capture = self._opener(self.name)
        if self._capture.isOpened():
            self.reconnects += 1
            logger.info("stream %s reopened", self.name)


def median_background(video: str | Path, samples: int = 25) -> np.ndarray | None:
    """The median of ``samples`` frames spread over a video file: the empty scene, when people keep moving.

    Returns:
        BGR ``[H, W, 3]``, or None for a stream, a clip too short to tell, or frames that cannot be read.
    """
    import cv2

    if is_stream(video):
        return None
    capture = cv2.VideoCapture(str(video))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count < 3:
            return None
        frames = []
        for index in np.linspace(0, count - 1, min(samples, count)).round().astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, frame = capture.read()
            if ok and frame is not None:
                frames.append(frame)
    finally:
        capture.release()
    if len(frames) < 3:
        return None
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def read_frames(video: str | Path, wanted: set[int]) -> dict[int, np.ndarray]:
    """The frames numbered ``wanted`` of a video file (BGR), read in one pass; frames it lacks are absent."""
    import cv2

    out: dict[int, np.ndarray] = {}
    if not wanted or not Path(video).is_file():
        return out
    capture = cv2.VideoCapture(str(video))
    try:
        last = max(wanted)
        index = 0
        while index <= last and capture.isOpened():
            if index in wanted:
                ok, frame = capture.read()
                if not ok:
                    break
                out[index] = frame
            elif not capture.grab():
                break
            index += 1
    finally:
        capture.release()
    return out
