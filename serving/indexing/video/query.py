"""``query_video``: a clip (typically infrared, at night) answered track by track with the gallery's tracks.

The clip goes through the same detection, tracking and crop choice as ingestion; each query track's crops are
embedded, fused into one descriptor (:func:`serving.runtime.ranking.fuse`, as ``POST /search/track`` fuses a
track) and searched with the gallery grouped by ``(camera, track_id)``
(:func:`index.grouping.search_groups`), so the answer is a ranked list of gallery *tracks*, each scored by its
best crop, with its camera, when it was seen and the sources of its crops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from index.grouping import search_groups
from serving.indexing.video import setup
from serving.indexing.video.crops import DEFAULT_K
from serving.indexing.video.decode import Reconnect, VideoSource, is_stream, video_identity
from serving.indexing.video.ingest import crop_source, track_name
from serving.indexing.video.pipeline import FinishedTrack, run_tracks
from serving.runtime.ranking import FUSIONS, fuse
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

#: Member crops listed per gallery track in the answer.
MEMBERS_SHOWN = 4


def query_video(video: str | Path, camera: int, *, model: Any, gallery: Any, detector: Any = "mog2",
                tracks_from: str | Path | None = None, top_k: int = 10, mot_out: str | Path | None = None,
                k: int = DEFAULT_K, cameras: list[int] | None = None, fusion: str = "mean", threads: int = 1,
                backend: str = "auto", show_progress: bool = False, reconnect: Reconnect | None = None,
                opener: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Answer every track of a query clip with the ranked gallery tracks.

    Args:
        video: the query clip (a file or a stream URL).
        camera: the camera that filmed it.
        model: the exported model or a loaded :class:`~serving.embedders.Embedder`.
        gallery: the gallery directory (opened read-only; it must belong to ``model``) or an open gallery.
        detector: as for :func:`~serving.indexing.video.ingest.ingest_video`.
        tracks_from: a MOT file of the clip's tracks instead of detection and tracking.
        top_k: gallery tracks per query track.
        mot_out: write the clip's tracked boxes in MOT format here.
        k: crops chosen (and fused) per query track.
        cameras: only gallery items of these cameras (None: all).
        fusion: ``mean`` or ``max`` (see :func:`serving.runtime.ranking.fuse`).
        threads: threads for OpenCV and the embedder.
        backend: embedder backend when ``model`` is a path.
        show_progress: draw a progress bar.
        reconnect: how a stream that drops is reopened.
        opener: ``source -> capture`` (tests inject fake captures).

    Returns:
        ``{"video", "camera", "fps", "frames", "detections", "seconds", "top_k", "tracks": [{"track_id",
        "frames": [first, last], "first_seen", "last_seen", "boxes", "crops", "crop_sources", "results":
        [{"rank", "camera", "track_id", "score", "first_seen", "last_seen", "count", "best", "sources"}]}]}``;
        ``first_seen`` / ``last_seen`` of the query are seconds from the clip's start.

    Raises:
        UserError: a missing or unreadable clip, a bad option, a gallery that is not one, is empty, or belongs
            to another model.
    """
    camera = setup.check_camera(camera)
    if not 1 <= top_k <= 1000:
        raise UserError(f"--top-k must be between 1 and 1000, got {top_k}")
    if fusion not in FUSIONS:
        raise UserError(f"unknown fusion {fusion!r}; valid: {', '.join(FUSIONS)}")
    if k < 1:
        raise UserError(f"k (crops per track) must be >= 1, got {k}")
    if not is_stream(video) and Path(video).is_dir():
        raise UserError(f"--video {video} is a folder; a query is one clip")
    setup.set_threads(threads)
    embedder = setup.embedder(model, backend, threads)
    store = setup.open_gallery_read(gallery, embedder)
    if len(store) == 0:
        raise UserError("the gallery is empty; ingest the gallery cameras' video first (python -m serving ingest)")
    name = str(video) if is_stream(video) else str(Path(video).resolve())
    source = VideoSource(name, reconnect=reconnect, **({"opener": opener} if opener else {}))
    identity = video_identity(name)
    started = time.perf_counter()
    tracks = setup.track_source(detector, tracks_from, source, threads)
    finished: list[FinishedTrack] = []
    with open(mot_out, "w") if mot_out is not None else nullcontext() as mot:
        stats = run_tracks(source, tracks, finished.append, height=embedder.height, width=embedder.width, k=k,
                           mot_out=mot, show_progress=show_progress, label=Path(name).name)
    answers = _search(store, embedder, finished, top_k, cameras, fusion)
    out_tracks = []
    for track, groups in zip(finished, answers):
        out_tracks.append({
            "track_id": track_name(name, identity, track.track), "frames": [track.first, track.last],
            "first_seen": track.first / source.fps, "last_seen": track.last / source.fps, "boxes": track.boxes,
            "crops": len(track.crops), "crop_sources": [crop_source(name, c.frame, c.box) for c in track.crops],
            "results": [_result(rank, g) for rank, g in enumerate(groups, start=1)]})
    if hasattr(store, "close") and not hasattr(gallery, "search"):
        store.close()
    return {"video": name, "camera": camera, "fps": source.fps, "frames": stats.frames,
            "detections": stats.detections, "seconds": time.perf_counter() - started, "top_k": top_k,
            "fusion": fusion, "gallery": None if hasattr(gallery, "search") else str(gallery), "tracks": out_tracks}


def _search(store: Any, embedder: Any, finished: list[FinishedTrack], top_k: int, cameras: list[int] | None,
            fusion: str) -> list[list[Any]]:
    """The gallery's top-``top_k`` ``(camera, track_id)`` groups for each query track's fused descriptor."""
    if not finished:
        return []
    pixels = [c.pixels for t in finished for c in t.crops]
    vectors = embedder.embed(np.stack(pixels))
    fused, start = [], 0
    for track in finished:
        fused.append(fuse(vectors[start:start + len(track.crops)], fusion))
        start += len(track.crops)
    return search_groups(store, np.stack(fused), top_k, "camera_track", cameras)


def _result(rank: int, group: Any) -> dict[str, Any]:
    """One ranked gallery track of the answer."""
    best_id, best_score, best = group.members[0]
    extra = best.get("extra") or {}
    singleton = isinstance(group.key, tuple) and len(group.key) == 2 and group.key[0] == "item"
    return {"rank": rank, "camera": best.get("camera"), "track_id": None if singleton else group.key[1],
            "score": float(group.score), "person_label": best.get("person_label"),
            "first_seen": extra.get("first_seen", best.get("timestamp")),
            "last_seen": extra.get("last_seen", best.get("timestamp")), "count": int(group.count),
            "best": {"id": int(best_id), "score": float(best_score), "source": best.get("source")},
            "sources": [m[2].get("source") for m in group.members[:MEMBERS_SHOWN]]}
