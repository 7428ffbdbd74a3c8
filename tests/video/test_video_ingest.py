"""Ingestion: what is indexed for each track, clips without people, resuming a folder, and bad input."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.indexing.common import gallery_metadata
from serving.indexing.video import ingest as ingest_module
from serving.indexing.video import ingest_video
from serving.indexing.video.ingest import DONE_NOTE, parse_source, summary_line
from xmreid.errors import UserError


def _items(gallery: Path) -> list[dict[str, Any]]:
    from index import Gallery

    return gallery_metadata(Gallery.load(gallery, read_only=True))


def test_each_track_is_indexed_with_camera_track_time_and_source(clip_dir: Path, video_embedder: Any,
                                                                   tmp_path: Path) -> None:
    report = ingest_video(clip_dir / "cam1.mp4", 4, model=video_embedder, gallery=tmp_path / "g",
                          start_time="1970-01-01T00:16:40Z", mot_out=tmp_path / "cam1.mot")
    assert (report["frames"], report["tracks"], report["crops"], report["gallery_size"]) == (60, 2, 8, 8)
    assert report["detections"] >= 100 and report["fps"] > 0 and report["seconds"] > 0
    items = _items(tmp_path / "g")
    assert {m["camera"] for m in items} == {4}
    names = sorted({m["track_id"] for m in items})
    assert len(names) == 2 and all(re.fullmatch(r"cam1-[0-9a-f]{10}-\d+", n) for n in names)
    for m in items:
        video, frame, box = parse_source(m["source"])
        assert Path(video) == (clip_dir / "cam1.mp4").resolve() and m["extra"]["frame"] == frame
        assert m["timestamp"] == pytest.approx(1000.0 + frame / 25.0)  # --start-time 00:16:40 = 1000 s
        assert m["extra"]["first_frame"] <= frame <= m["extra"]["last_frame"]
        assert m["extra"]["first_seen"] == pytest.approx(1000.0 + m["extra"]["first_frame"] / 25.0)
        assert box[2] > box[0] and box[3] > box[1]
    # Four crops per track, spread over its life.
    for name in names:
        frames = sorted(m["extra"]["frame"] for m in items if m["track_id"] == name)
        assert len(frames) == 4 and frames[-1] - frames[0] >= 25
    mot_lines = (tmp_path / "cam1.mot").read_text().splitlines()
    assert len(mot_lines) >= 100 and all(len(line.split(",")) == 10 for line in mot_lines)


def test_clips_without_people_or_frames_are_fine(clip_dir: Path, video_embedder: Any, tmp_path: Path) -> None:
    still = ingest_video(clip_dir / "still.mp4", 1, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    assert (still["frames"], still["tracks"], still["crops"]) == (30, 0, 0)
    assert "no people found" in summary_line(still["videos"][0])
    empty = ingest_video(clip_dir / "empty.avi", 1, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    assert (empty["frames"], empty["tracks"], empty["videos"][0]["status"]) == (0, 0, "ingested")


def _folder(clip_dir: Path, people_clips: Path, root: Path) -> Path:
    (root / "day1").mkdir(parents=True)
    shutil.copy(clip_dir / "cam1.mp4", root / "day1" / "a.mp4")
    shutil.copy(people_clips / "gal" / "cam1.mp4", root / "day1" / "b.mp4")
    (root / "notes.txt").write_text("not a video")
    return root


def test_an_interrupted_folder_resumes_without_duplicates(clip_dir: Path, people_clips: Path, video_embedder: Any,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    videos = _folder(clip_dir, people_clips, tmp_path / "videos")
    clean = ingest_video(videos, 1, model=video_embedder, gallery=tmp_path / "clean", start_time=0)
    assert [v["status"] for v in clean["videos"]] == ["ingested", "ingested"] and clean["tracks"] >= 4

    real = ingest_module.run_tracks

    def interrupted(source: Any, tracks: Any, on_track: Any, **kwargs: Any) -> Any:
        if not source.name.endswith("b.mp4"):
            return real(source, tracks, on_track, **kwargs)

        def then_stop(track: Any) -> None:  # the first track of b.mp4 is embedded and saved, then Ctrl-C
            on_track(track)
            raise KeyboardInterrupt

        return real(source, tracks, then_stop, **kwargs)

    monkeypatch.setattr(ingest_module, "run_tracks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest_video(videos, 1, model=video_embedder, gallery=tmp_path / "g", start_time=0, batch_size=1,
                     save_every=1)
    partial = _items(tmp_path / "g")
    a_items = [m for m in partial if m["source"].split("#")[0].endswith("a.mp4")]
    b_items = [m for m in partial if m["source"].split("#")[0].endswith("b.mp4")]
    assert len(a_items) == clean["videos"][0]["crops"] and 0 < len(b_items) < clean["videos"][1]["crops"]

    monkeypatch.setattr(ingest_module, "run_tracks", real)
    again = ingest_video(videos, 1, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    assert [v["status"] for v in again["videos"]] == ["already ingested", "ingested"]
    resumed = _items(tmp_path / "g")
    sources = [m["source"] for m in resumed]
    assert len(sources) == len(set(sources)) == clean["gallery_size"]  # nothing twice, nothing missing
    assert sorted(sources) == sorted(m["source"] for m in _items(tmp_path / "clean"))
    assert len({m["track_id"] for m in resumed}) == clean["tracks"]
    third = ingest_video(videos, 1, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    assert [v["status"] for v in third["videos"]] == ["already ingested"] * 2 and third["crops"] == 0

    from index import Gallery

    assert DONE_NOTE in Gallery.load(tmp_path / "g", read_only=True).notes


def test_track_ids_are_unique_across_videos(clip_dir: Path, people_clips: Path, video_embedder: Any,
                                            tmp_path: Path) -> None:
    for video in (clip_dir / "cam1.mp4", people_clips / "gal" / "cam1.mp4"):  # the same stem, another clip
        ingest_video(video, 1, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    by_video: dict[str, set[str]] = {}
    for m in _items(tmp_path / "g"):
        by_video.setdefault(m["extra"]["video_id"], set()).add(m["track_id"])
    assert len(by_video) == 2 and not set.intersection(*by_video.values())


def test_unreadable_video_in_a_folder_is_skipped_and_reported(clip_dir: Path, video_embedder: Any,
                                                             tmp_path: Path) -> None:
    (tmp_path / "v").mkdir()
    shutil.copy(clip_dir / "cam1.mp4", tmp_path / "v" / "good.mp4")
    (tmp_path / "v" / "bad.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    report = ingest_video(tmp_path / "v", 2, model=video_embedder, gallery=tmp_path / "g", start_time=0)
    assert [v["status"].split(":")[0] for v in report["videos"]] == ["failed", "ingested"]
    assert report["failed"] == [str((tmp_path / "v" / "bad.mp4").resolve())] and report["tracks"] == 2


def test_bad_input_is_one_sentence(clip_dir: Path, video_embedder: Any, tmp_path: Path) -> None:
    from index import Gallery

    other = Gallery.create(video_embedder.dim, fingerprint="0" * 64, directory=tmp_path / "other")
    other.add(np.ones((1, video_embedder.dim), np.float32), [{"camera": 1}])
    other.save(tmp_path / "other")
    other.close()
    with pytest.raises(UserError, match="new --gallery directory"):  # a gallery of another model
        ingest_video(clip_dir / "cam1.mp4", 1, model=video_embedder, gallery=tmp_path / "other", start_time=0)
    with pytest.raises(UserError, match="camera's number"):
        ingest_video(clip_dir / "cam1.mp4", "front door", model=video_embedder, gallery=tmp_path / "g")
    with pytest.raises(UserError, match="video not found"):
        ingest_video(tmp_path / "none.mp4", 1, model=video_embedder, gallery=tmp_path / "g")
    with pytest.raises(UserError, match="one file, not a folder"):
        ingest_video(clip_dir, 1, model=video_embedder, gallery=tmp_path / "g", tracks_from=clip_dir / "cam1.txt")
    with pytest.raises(UserError, match="ISO-8601"):
        ingest_video(clip_dir / "cam1.mp4", 1, model=video_embedder, gallery=tmp_path / "g", start_time="noon")


def test_a_stream_that_drops_is_reopened_and_each_run_is_a_new_recording(clip_dir: Path, video_embedder: Any,
                                                                          tmp_path: Path) -> None:
    import cv2

    from serving.indexing.video.decode import Reconnect

    class Camera:
        """A camera behind a URL: its frames come from a clip; the connection drops once, after 25 frames."""

        def __init__(self) -> None:
            self.clip = cv2.VideoCapture(str(clip_dir / "cam1.mp4"))
            self.delivered, self.opens = 0, 0

        def open(self, url: str) -> Any:
            self.opens += 1
            camera = self

            class Connection:
                def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
                    return True

                def read(self) -> tuple[bool, Any]:
                    if camera.delivered == 25 and camera.opens == 1:
                        return False, None  # the drop
                    ok, frame = camera.clip.read()
                    camera.delivered += ok
                    return ok, frame

                def get(self, prop: int) -> float:
                    return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

                def release(self) -> None:
                    pass

            return Connection()

    reports = []
    for start in (1000.0, 2000.0):
        camera = Camera()
        reports.append(ingest_video("rtsp://gate7.local/live", 7, model=video_embedder, gallery=tmp_path / "g",
                                    start_time=start, opener=camera.open,
                                    reconnect=Reconnect(retries=2, first_wait_s=0.01)))
        assert camera.opens == 4  # the first connection, the reopening after the drop, two tries after the end
    first, second = reports
    assert first["frames"] == 60 and first["videos"][0]["reconnects"] >= 1 and first["tracks"] == 2
    items = _items(tmp_path / "g")
    assert len(items) == first["crops"] + second["crops"] == 16
    assert len({m["source"] for m in items}) == 16 and len({m["track_id"] for m in items}) == 4
    assert all(m["track_id"].startswith("live-") and m["source"].startswith("rtsp://gate7.local/live@")
               for m in items)
