"""Video queries: the answer's shape, the right track first on an easy case, and the contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import pytest

from serving.indexing.video import ingest_video, query_video
from serving.indexing.video.sheet import write_sheet
from xmreid.errors import UserError


@pytest.fixture(scope="module")
def people_gallery(people_clips: Path, video_embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Cameras 1 and 2 of ``people_clips`` ingested with their ground-truth tracks (track n = person n)."""
    gallery = tmp_path_factory.mktemp("people_gallery") / "g"
    for camera in (1, 2):
        ingest_video(people_clips / "gal" / f"cam{camera}.mp4", camera, model=video_embedder, gallery=gallery,
                     tracks_from=people_clips / "gal" / f"cam{camera}.txt", start_time=1_700_000_000)
    return gallery


def _person(track_id: str) -> int:
    return int(track_id.rsplit("-", 1)[1])


def test_each_query_track_finds_the_same_person_first(people_clips: Path, people_gallery: Path,
                                                      video_embedder: Any) -> None:
    result = query_video(people_clips / "query.mp4", 3, model=video_embedder, gallery=people_gallery,
                         tracks_from=people_clips / "query.txt", top_k=4)
    assert [_person(t["track_id"]) for t in result["tracks"]] == [1, 2, 3]
    for track in result["tracks"]:
        results = track["results"]
        assert [r["rank"] for r in results] == [1, 2, 3, 4]
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        assert _person(results[0]["track_id"]) == _person(track["track_id"]), track
        assert len({(r["camera"], r["track_id"]) for r in results}) == 4  # tracks, not crops
        assert all(r["count"] == 4 and 1 <= len(r["sources"]) <= 4 for r in results)


def test_query_answer_shape_with_detection_and_tracking(people_clips: Path, people_gallery: Path,
                                                        video_embedder: Any, tmp_path: Path) -> None:
    result = query_video(people_clips / "query.mp4", 3, model=video_embedder, gallery=str(people_gallery),
                         top_k=2, mot_out=tmp_path / "q.mot", cameras=[2])
    assert set(result) >= {"video", "camera", "fps", "frames", "detections", "seconds", "top_k", "tracks"}
    assert result["frames"] == 95 and result["camera"] == 3 and len(result["tracks"]) == 3
    for track in result["tracks"]:
        assert set(track) >= {"track_id", "frames", "first_seen", "last_seen", "crops", "crop_sources", "results"}
        assert track["frames"][0] <= track["frames"][1] and track["crops"] == len(track["crop_sources"]) == 4
        assert track["last_seen"] == pytest.approx(track["frames"][1] / 25.0)
        for hit in track["results"]:
            assert set(hit) >= {"rank", "camera", "track_id", "score", "first_seen", "last_seen"}
            assert hit["camera"] == 2  # the camera filter
            assert 1_700_000_000 <= hit["first_seen"] <= hit["last_seen"] <= 1_700_000_000 + 95 / 25
    assert (tmp_path / "q.mot").read_text().count("\n") >= 60


def test_contact_sheet_html_and_png(people_clips: Path, people_gallery: Path, video_embedder: Any,
                                    tmp_path: Path) -> None:
    result = query_video(people_clips / "query.mp4", 3, model=video_embedder, gallery=people_gallery,
                         tracks_from=people_clips / "query.txt", top_k=3)
    html = write_sheet(result, tmp_path / "sheet.html").read_text()
    # Each query track: its 4 crops, then 3 gallery tracks of up to 3 crops each, all inline PNGs.
    assert html.count("<img") == 3 * (4 + 3 * 3) and html.count("data:image/png;base64,") == html.count("<img")
    assert "camera 1" in html and "score" in html
    image = cv2.imread(str(write_sheet(result, tmp_path / "sheet.png")))
    assert image is not None and image.shape[0] > 3 * 4 * 128
    with pytest.raises(UserError, match="html or .png"):
        write_sheet(result, tmp_path / "sheet.pdf")


def test_query_bad_input(people_clips: Path, people_gallery: Path, video_embedder: Any, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a gallery"):
        query_video(people_clips / "query.mp4", 3, model=video_embedder, gallery=tmp_path)
    with pytest.raises(UserError, match="top-k"):
        query_video(people_clips / "query.mp4", 3, model=video_embedder, gallery=people_gallery, top_k=0)
    with pytest.raises(UserError, match="a query is one clip"):
        query_video(people_clips, 3, model=video_embedder, gallery=people_gallery)
