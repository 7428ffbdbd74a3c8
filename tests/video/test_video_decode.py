"""Decoding: unreadable and empty files, frame rate and count, streams that drop and are reopened with backoff."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.indexing.video.decode import (
    Reconnect,
    VideoSource,
    is_stream,
    median_background,
    read_frames,
    video_files,
    video_identity,
)
from xmreid.errors import EXIT_DAMAGED, UserError


class FakeCapture:
    """A ``cv2.VideoCapture`` stand-in that delivers ``frames`` frames (numbered in their pixels), then fails."""

    def __init__(self, opened: bool, frames: int, start: int, fps: float = 25.0, count: float = 0.0) -> None:
        self.opened, self.left, self.next, self.fps, self.count = opened, frames, start, fps, count
        self.released = False

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened and not self.released

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.isOpened() or self.left == 0:
            return False, None
        self.left -= 1
        self.next += 1
        return True, np.full((4, 4, 3), self.next - 1, np.uint8)

    def get(self, prop: int) -> float:
        import cv2

        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_COUNT: self.count}.get(prop, 4.0)

    def release(self) -> None:
        self.released = True


class Opener:
    """Opens the scripted captures in turn: ``(opened, frames)`` per connection."""

    def __init__(self, script: list[tuple[bool, int]], **kwargs: float) -> None:
        self.script, self.kwargs, self.opens, self.delivered = list(script), kwargs, 0, 0

    def __call__(self, source: str) -> FakeCapture:
        opened, frames = self.script[min(self.opens, len(self.script) - 1)]
        self.opens += 1
        capture = FakeCapture(opened, frames, self.delivered, **self.kwargs)
        self.delivered += frames if opened else 0
        return capture


def test_a_garbage_file_is_one_sentence_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "cam1.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as info:
        VideoSource(bad)
    assert info.value.exit_code == EXIT_DAMAGED
    message = str(info.value)
    assert "cam1.mp4" in message and "\n" not in message and message.count(". ") == 0


def test_a_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="video not found"):
        VideoSource(tmp_path / "nope.mp4")


def test_an_undecodable_codec_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "odd.mkv"
    path.write_bytes(b"x")
    # Opens (the container is known) and claims frames, but no frame decodes: an unsupported codec.
    source = VideoSource(path, opener=Opener([(True, 0)], count=100.0))
    with pytest.raises(UserError, match="unsupported codec") as info:
        list(source.frames())
    assert info.value.exit_code == EXIT_DAMAGED


def test_an_empty_clip_has_no_frames_and_is_no_error(clip_dir: Path) -> None:
    source = VideoSource(clip_dir / "empty.avi")
    assert list(source.frames()) == []


def test_a_file_reports_fps_count_and_size(clip_dir: Path) -> None:
    source = VideoSource(clip_dir / "cam1.mp4")
    assert (source.fps, source.frame_count, source.width, source.height) == (25.0, 60, 320, 240)
    frames = list(source.frames())
    assert [i for i, _ in frames] == list(range(60)) and frames[0][1].shape == (240, 320, 3)


def test_a_stream_that_drops_is_reopened_with_backoff_and_frames_continue() -> None:
    waits: list[float] = []
    # 5 frames, drop; first reopen fails; second gives 3 frames, drop; then it never comes back.
    opener = Opener([(True, 5), (False, 0), (True, 3), (False, 0)])
    source = VideoSource("rtsp://camera.local/stream", opener=opener, sleep=waits.append,
                         reconnect=Reconnect(retries=3, first_wait_s=0.5, max_wait_s=1.5))
    frames = list(source.frames())
    assert [i for i, _ in frames] == list(range(8))  # numbering continues across the gap
    assert [int(f[0, 0, 0]) for _, f in frames] == list(range(8))  # and they are the stream's frames, in order
    # Drop 1: tries at 0.5 s (fails) then 1.0 s (opens). Drop 2: the count restarts (frames came): 0.5, 1.0, 1.5 cap.
    assert waits == [0.5, 1.0, 0.5, 1.0, 1.5]
    assert source.reconnects == 1 and opener.opens == 6


def test_a_stream_that_cannot_be_opened_is_a_user_error() -> None:
    with pytest.raises(UserError, match="cannot open the stream"):
        VideoSource("rtsp://camera.local/stream", opener=Opener([(False, 0)]))


def test_a_stream_without_a_frame_rate_assumes_25() -> None:
    source = VideoSource("http://camera.local/mjpg", opener=Opener([(True, 2)], fps=0.0),
                         reconnect=Reconnect(retries=0))
    assert source.fps == 25.0 and source.frame_count is None and len(list(source.frames())) == 2


def test_identity_follows_content_not_name(clip_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.mp4"
    copy.write_bytes((clip_dir / "cam1.mp4").read_bytes())
    assert video_identity(copy) == video_identity(clip_dir / "cam1.mp4") != video_identity(clip_dir / "still.mp4")
    assert is_stream("rtsp://x/y") and not is_stream(clip_dir / "cam1.mp4")
    assert [p.name for p in video_files(clip_dir)] == ["cam1.mp4", "empty.avi", "still.mp4"]


def test_median_background_removes_the_walkers(clip_dir: Path) -> None:
    from video_clips import background

    bg = median_background(clip_dir / "cam1.mp4")
    truth = background(320, 240, 1)
    # Codec noise aside, the median is the empty scene (the walkers cover each pixel only briefly).
    assert np.percentile(np.abs(bg.astype(int) - truth.astype(int)), 99) < 20
    assert median_background("rtsp://x/y") is None


def test_read_frames_reads_the_asked_frames(clip_dir: Path) -> None:
    frames = read_frames(clip_dir / "cam1.mp4", {3, 40, 500})
    all_frames = dict(VideoSource(clip_dir / "cam1.mp4").frames())
    assert sorted(frames) == [3, 40]
    assert np.array_equal(frames[40], all_frames[40])
