"""Turn what the video benchmark's stages returned into its figures: tracking, detection, retrieval, speed.

A gallery or query track of the detector path belongs to the person most of its boxes match (IoU >= 0.5);
a ground-truth track is its person. A query track is right when its best gallery track is of its person.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks._video_metrics import detection_scores, matched_gt, retrieval_scores, track_people, tracking_scores
from benchmarks._video_run import Camera

VISIBLE = 0.5  # recall is also reported apart for boxes at least this visible and for the rest


def tracker_id(track_id: Any) -> int | None:
    """The per-video tracker id at the end of a gallery ``track_id`` (``<video stem>-<content hash>-<id>``)."""
    if track_id is None:
        return None
    try:
        return int(str(track_id).rsplit("-", 1)[-1])
    except ValueError:
        return None


def people_of_tracks(cameras: list[Camera], path: str) -> dict[int, dict[int, int | None]]:
    """Camera -> tracker id -> ground-truth person, for the tracks of ``path`` (``detector`` or ``gt``)."""
    out: dict[int, dict[int, int | None]] = {}
    for cam in cameras:
        if path == "gt":
            out[cam.camid] = {int(p): int(p) for p in np.unique(cam.gt[:, 1])}
        elif cam.pred is not None:
            out[cam.camid] = track_people(cam.pred, cam.gt)
    return out


def retrieval(cameras: list[Camera], path: str) -> dict[str, Any]:
    """IR-track -> RGB-track rank-1 and mAP of one path, over the query tracks of every infrared camera."""
    people = people_of_tracks(cameras, path)
    queries = []
    for cam in cameras:
        answer = cam.answers.get(path)
        if answer is None:
            continue
        for track in answer["tracks"]:
            person = people.get(cam.camid, {}).get(tracker_id(track["track_id"]))
            ranked = [people.get(r.get("camera"), {}).get(tracker_id(r.get("track_id"))) for r in track["results"]]
            queries.append((person, ranked, None))
    gallery = sum(len(people.get(c.camid, {})) for c in cameras if c.modality == "rgb")
    return {**retrieval_scores(queries), "query_tracks": len(queries), "gallery_tracks": gallery}


def camera_rows(cameras: list[Camera], clip_fps: float, tracking: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per camera: ground truth, the detector path's tracks and scores, and (RGB) ingestion speed.

    ``tracking`` is :func:`tracking_scores` of the cameras, by camera number (as a string).
    """
    rows = []
    for cam in cameras:
        row: dict[str, Any] = {"camera": cam.camid, "modality": cam.modality, "frames": cam.frames,
                               "gt_people": len(np.unique(cam.gt[:, 1])), "gt_boxes": len(cam.gt)}
        if cam.pred is not None:
            det = detection_scores(cam.gt, cam.pred)
            trk = tracking[str(cam.camid)]
            row.update(tracks=len(np.unique(cam.pred[:, 1])), det_recall=det["det_recall"],
                       det_precision=det["det_precision"], idf1=trk["idf1"], mota=trk["mota"],
                       id_switches=trk["id_switches"])
        if cam.wall_s:
            report = cam.ingest["detector"]
            row.update(ingest_fps=report["frames"] / cam.wall_s, realtime=report["frames"] / cam.wall_s / clip_fps,
                       crops=report["crops"], cores=None if cam.cpu_s is None else cam.cpu_s / cam.wall_s)
        rows.append(row)
    return rows


def summarize(meta: dict[str, Any], cameras: list[Camera]) -> dict[str, Any]:
    """The benchmark's results: headline figures, per-camera rows and both retrieval paths in full."""
    clip_fps = float(meta["fps"])
    scored = [c for c in cameras if c.pred is not None]
    per_camera = tracking_scores({str(c.camid): (c.gt, c.pred) for c in scored}) if scored else {}
    tracking = per_camera.get("overall", {})
    per_det = [detection_scores(c.gt, c.pred) for c in scored]
    tp, n_gt, n_pred = (sum(d[k] for d in per_det) for k in ("tp", "gt", "pred"))
    det = {"det_recall": tp / n_gt if n_gt else None, "det_precision": tp / n_pred if n_pred else None,
           "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp}
    if scored:  # which boxes the detector misses: mostly the occluded and the cut ones
        hit = np.concatenate([matched_gt(c.gt, c.pred) for c in scored])
        vis = np.concatenate([c.visibility for c in scored])
        det["recall_visible"] = float(hit[vis >= VISIBLE].mean()) if (vis >= VISIBLE).any() else None
        det["recall_occluded"] = float(hit[vis < VISIBLE].mean()) if (vis < VISIBLE).any() else None
        det["occluded_share"] = float((vis < VISIBLE).mean())
    found = retrieval(cameras, "detector")
    truth = retrieval(cameras, "gt")
    fps = {str(c.camid): c.ingest["detector"]["frames"] / c.wall_s for c in cameras if c.wall_s}
    return {
        "idf1": tracking.get("idf1"), "mota": tracking.get("mota"), "id_switches": tracking.get("id_switches"),
        "det_recall": det["det_recall"], "det_precision": det["det_precision"],
        "track_rank1": found["rank1"], "track_map": found["map"],
        "track_rank1_gt": truth["rank1"], "track_map_gt": truth["map"],
        "fps_per_camera": fps, "fps_min": min(fps.values()) if fps else None, "clip_fps": clip_fps,
        "realtime_min": min(fps.values()) / clip_fps if fps else None,
        "cores_max": max((c.cpu_s / c.wall_s for c in cameras if c.wall_s and c.cpu_s is not None), default=None),
        "tracking": tracking, "detection": det, "retrieval": {"detector": found, "gt": truth},
        "cameras": camera_rows(cameras, clip_fps, per_camera),
        "data": {k: meta.get(k) for k in ("seed", "ids", "frames", "fps", "width", "height", "difficulty")},
    }
