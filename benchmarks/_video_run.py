"""The stages of the video benchmark: ingest the RGB clips, query with the infrared clips, both ways.

"Both ways" is the product's default path (detector + tracker) and the ground-truth tracks of the clip set
(``tracks_from=gt.txt``), each into its own gallery, so that what detection and tracking cost is the gap between
the two. Everything goes through the public ``serving.indexing.video`` functions, as the command lines do.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._video_metrics import read_mot
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

TOP_K = 1000  # the most query_video allows: the whole gallery of a clip set, so mAP sees every track
PATHS = ("detector", "gt")  # the product's detection + tracking; the clip set's ground-truth tracks


@dataclass
class Camera:
    """One camera of the clip set and what the benchmark got from it."""

    camid: int
    modality: str
    video: Path
    gt_path: Path
    gt: np.ndarray  # MOT rows (6 columns)
    visibility: np.ndarray  # per ground-truth row, the visible fraction of the person
    frames: int = 0
    pred: np.ndarray | None = None  # the tracker's boxes (MOT rows) on the detector path
    ingest: dict[str, Any] = field(default_factory=dict)  # path -> ingest report (RGB cameras)
    wall_s: float | None = None  # wall time of the timed ingestion (detector path, one thread)
    cpu_s: float | None = None  # CPU time of this process (all its threads) in that ingestion
    answers: dict[str, Any] = field(default_factory=dict)  # path -> query_video answer (infrared cameras)


def load_clip_set(root: Path) -> tuple[dict[str, Any], list[Camera]]:
    """``meta.json`` of a synthetic clip set and its cameras, with their ground truth read."""
    meta_path = Path(root) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--data {root} is not a synthetic video set (python -m training synth --layout video): "
                        f"cannot read {meta_path.name}: {exc}") from None
    if meta.get("layout") != "video":
        raise UserError(f"--data {root}: {meta_path.name} describes a {meta.get('layout')!r} set, not video clips")
    cameras = []
    for cam, entry in sorted(meta["cameras"].items(), key=lambda kv: int(kv[0])):
        video, gt = Path(root) / entry["video"], Path(root) / entry["gt"]
        if not video.is_file() or not gt.is_file():
            raise UserError(f"--data {root}: camera {cam} lacks {entry['video']} or {entry['gt']}")
        try:
            rows = read_mot(gt, columns=9)
        except ValueError as exc:
            raise UserError(f"--data {root}: {exc}") from None
        cameras.append(Camera(int(cam), entry["modality"], video, gt, rows[:, :6], rows[:, 8],
                              frames=int(meta["frames"])))
    return meta, cameras


def run_stages(cameras: list[Camera], model: Path, galleries: Path, detector: str = "mog2",
               threads: int = 1) -> None:
    """Ingest every RGB camera and query with every infrared camera, by both paths; fills ``cameras`` in place.

    Args:
        cameras: from :func:`load_clip_set`.
        model: the exported model.
        galleries: an empty folder; the galleries ``detector/`` and ``gt/`` and the tracker's MOT files go there.
        detector: the ingestion's detector (its default unless a user's ONNX is measured).
        threads: threads for OpenCV and the embedder (the speed figure is for one).
    """
    from serving.indexing.video import ingest_video, query_video

    mot_dir = galleries / "mot"
    mot_dir.mkdir(parents=True, exist_ok=True)
    for cam in (c for c in cameras if c.modality == "rgb"):
        out = mot_dir / f"cam{cam.camid}.txt"
        started, cpu = time.perf_counter(), time.process_time()
        report = ingest_video(cam.video, cam.camid, model=model, gallery=galleries / "detector", detector=detector,
                              start_time=0, mot_out=out, threads=threads)
        cam.wall_s, cam.cpu_s = time.perf_counter() - started, time.process_time() - cpu
        cam.ingest["detector"] = report
        cam.pred = read_mot(out)
        cam.ingest["gt"] = ingest_video(cam.video, cam.camid, model=model, gallery=galleries / "gt",
                                        tracks_from=cam.gt_path, start_time=0, threads=threads)
        logger.info("camera %d: %d frames in %.1f s, %s tracks (ground truth: %s)", cam.camid, report["frames"],
                    cam.wall_s, report["tracks"], cam.ingest["gt"]["tracks"])
    for cam in (c for c in cameras if c.modality == "ir"):
        out = mot_dir / f"cam{cam.camid}.txt"
        cam.answers["detector"] = query_video(cam.video, cam.camid, model=model, gallery=galleries / "detector",
                                              detector=detector, top_k=TOP_K, mot_out=out, threads=threads)
        cam.pred = read_mot(out)
        cam.answers["gt"] = query_video(cam.video, cam.camid, model=model, gallery=galleries / "gt",
                                        tracks_from=cam.gt_path, top_k=TOP_K, threads=threads)
        logger.info("camera %d: %d query tracks (ground truth: %d)", cam.camid, len(cam.answers["detector"]["tracks"]),
                    len(cam.answers["gt"]["tracks"]))
