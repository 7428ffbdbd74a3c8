"""Scores of the video benchmark, as pure functions of MOTChallenge rows: detection, tracking, track retrieval.

Boxes are MOTChallenge rows ``frame, id, left, top, width, height, ...`` (only the first six columns are read).
A predicted box and a ground-truth box *match* when their IoU is at least 0.5, one-to-one within a frame
(Hungarian assignment on IoU, as the CLEAR-MOT and identity metrics do). Tracking metrics come from
``motmetrics`` (Bernardin & Stiefelhagen's CLEAR-MOT, Ristani et al.'s IDF1), fed with our own IoU distances:
its ``distances.iou_matrix`` calls ``np.asfarray``, which NumPy 2 removed, and nothing else in it does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

IOU = 0.5
MOT_COLUMNS = 6  # frame, id, left, top, width, height
_TRACKING = {"idf1": "idf1", "mota": "mota", "motp_iou": "motp", "id_switches": "num_switches",
             "false_positives": "num_false_positives", "misses": "num_misses", "gt_boxes": "num_objects",
             "gt_tracks": "num_unique_objects", "mostly_tracked": "mostly_tracked", "idp": "idp", "idr": "idr"}


def read_mot(path: str | Path, columns: int = MOT_COLUMNS) -> np.ndarray:
    """The rows of a MOTChallenge text file as float64 ``[n, columns]`` (frame, id, left, top, width, height, ...;
    9 columns for a ground-truth file's visibility).

    An empty file is zero rows; a row with fewer numbers is a ``ValueError`` naming the file and line.
    """
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        values = line.replace(" ", "").split(",")
        if len(values) < columns:
            raise ValueError(f"{path}:{n}: a MOT row needs at least {columns} comma-separated numbers")
        rows.append([float(v) for v in values[:columns]])
    return np.array(rows, np.float64).reshape(-1, columns)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b`` (both ``[n, 4]`` left, top, width, height) -> ``[na, nb]``."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum((a[:, 0] + a[:, 2])[:, None], (b[:, 0] + b[:, 2])[None, :])
    y1 = np.minimum((a[:, 1] + a[:, 3])[:, None], (b[:, 1] + b[:, 3])[None, :])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match(gt_boxes: np.ndarray, pred_boxes: np.ndarray, threshold: float = IOU) -> list[tuple[int, int]]:
    """One-to-one pairs ``(gt index, pred index)`` with IoU >= ``threshold`` maximising the summed IoU."""
    overlap = iou(gt_boxes, pred_boxes)
    if overlap.size == 0:
        return []
    rows, cols = linear_sum_assignment(np.where(overlap >= threshold, 1.0 - overlap, 2.0))
    return [(int(r), int(c)) for r, c in zip(rows, cols) if overlap[r, c] >= threshold]


def _frames(gt: np.ndarray, pred: np.ndarray):
    """``(frame, gt rows, pred rows)`` for every frame that has a box in either."""
    frames = np.union1d(gt[:, 0], pred[:, 0])
    for f in frames:
        yield int(f), gt[gt[:, 0] == f], pred[pred[:, 0] == f]


def matched_gt(gt: np.ndarray, pred: np.ndarray, threshold: float = IOU) -> np.ndarray:
    """Whether each ground-truth row (in ``gt``'s order) is matched by a predicted box of its frame."""
    hit = np.zeros(len(gt), bool)
    for f in np.unique(gt[:, 0]):
        rows = np.flatnonzero(gt[:, 0] == f)
        p = pred[pred[:, 0] == f]
        for gi, _ in match(gt[rows, 2:6], p[:, 2:6], threshold):
            hit[rows[gi]] = True
    return hit


def detection_scores(gt: np.ndarray, pred: np.ndarray, threshold: float = IOU) -> dict[str, float | int | None]:
    """Box recall and precision at IoU >= ``threshold``, identities ignored.

    Returns:
        ``det_recall`` (matched / ground-truth boxes), ``det_precision`` (matched / predicted boxes; None
        without predictions), and the counts ``tp``, ``fp``, ``fn``, ``gt`` and ``pred`` (boxes).
    """
    tp = int(matched_gt(gt, pred, threshold).sum())
    n_gt, n_pred = len(gt), len(pred)
    return {"det_recall": tp / n_gt if n_gt else None, "det_precision": tp / n_pred if n_pred else None,
            "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp, "gt": n_gt, "pred": n_pred}


def _accumulator(gt: np.ndarray, pred: np.ndarray, threshold: float):
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=False)
    for f, g, p in _frames(gt, pred):
        overlap = iou(g[:, 2:6], p[:, 2:6])
        dist = np.where(overlap >= threshold, 1.0 - overlap, np.nan)  # NaN: may not be paired
        acc.update(g[:, 1].astype(int).tolist(), p[:, 1].astype(int).tolist(), dist, frameid=f)
    return acc


def tracking_scores(clips: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    threshold: float = IOU) -> dict[str, dict[str, float | int | None]]:
    """CLEAR-MOT and identity scores per clip and over all clips together.

    Args:
        clips: name (e.g. the camera) -> ``(ground truth rows, predicted rows)``; ids are per clip.
        threshold: IoU a predicted box needs to count for a ground-truth box.

    Returns:
        name -> scores, plus ``"overall"`` (all clips as one sequence set, as the MOTChallenge summary does):
        ``idf1``, ``mota``, ``motp_iou`` (mean IoU of matched boxes), ``id_switches``, ``false_positives``,
        ``misses``, ``gt_boxes``, ``gt_tracks``, ``mostly_tracked``, ``idp``, ``idr``.
    """
    import motmetrics as mm

    names = list(clips)
    accs = [_accumulator(*clips[n], threshold) for n in names]
    summary = mm.metrics.create().compute_many(accs, names=names, metrics=list(_TRACKING.values()),
                                               generate_overall=True)
    out = {}
    for name, row in summary.iterrows():
        scores = {}
        for key, column in _TRACKING.items():
            value = float(row[column])
            scores[key] = None if np.isnan(value) else (int(value) if column.startswith(("num_", "mostly")) else value)
        if scores["motp_iou"] is not None:
            scores["motp_iou"] = 1.0 - scores["motp_iou"]  # motmetrics reports the mean distance, 1 - IoU
        out["overall" if name == "OVERALL" else str(name)] = scores
    return out


def track_people(pred: np.ndarray, gt: np.ndarray, threshold: float = IOU) -> dict[int, int | None]:
    """The ground-truth person of every predicted track: the majority of the people its boxes match.

    Each predicted box is matched within its frame (IoU >= ``threshold``, one-to-one); a track's person is
    the ground-truth id most of its matched boxes carry (ties: the smaller id), None when no box matched.
    """
    votes: dict[int, Counter] = {int(t): Counter() for t in np.unique(pred[:, 1])}
    for _, g, p in _frames(gt, pred):
        for gi, pi in match(g[:, 2:6], p[:, 2:6], threshold):
            votes[int(p[pi, 1])][int(g[gi, 1])] += 1
    return {track: (min(c, key=lambda pid: (-c[pid], pid)) if c else None) for track, c in votes.items()}


def average_precision(relevant: Sequence[bool], n_relevant: int | None = None) -> float:
    """Average precision of one ranking: the mean of precision@k over the ranks k of the relevant items.

    ``n_relevant`` is how many relevant items the whole gallery holds (default: those in the ranking), so a
    ranking cut off before the last of them scores less.
    """
    hits = np.asarray(relevant, bool)
    total = int(hits.sum()) if n_relevant is None else int(n_relevant)
    if total == 0:
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float((np.arange(1, len(ranks) + 1) / ranks).sum() / total)


Query = tuple[int | None, Sequence[int | None], int | None]  # person, ranked gallery people, gallery count


def retrieval_scores(queries: Iterable[Query]) -> dict[str, float | int | None]:
    """Rank-1 and mAP of query tracks answered with ranked gallery tracks, each labelled with its person.

    Args:
        queries: per query track ``(its person, the people of its ranked gallery tracks, best first, how many
            gallery tracks of that person the gallery holds or None)``. A query without a person (a false
            track) is left out; a gallery track without one (a false track) stays in the ranking and is never
            right. A query whose person has no gallery track is left out too, as in re-ID evaluation.

    Returns:
        ``rank1`` (share of queries whose best gallery track is the query's person), ``map``, ``queries``
        (counted), ``no_person`` and ``no_match`` (left out); rank1 and map are None without queries.
    """
    right, aps, no_person, no_match = [], [], 0, 0
    for person, ranked, n_relevant in queries:
        if person is None:
            no_person += 1
            continue
        hits = [g is not None and g == person for g in ranked]
        if (n_relevant if n_relevant is not None else sum(hits)) == 0:
            no_match += 1
            continue
        right.append(bool(hits) and hits[0])
        aps.append(average_precision(hits, n_relevant))
    return {"rank1": float(np.mean(right)) if right else None, "map": float(np.mean(aps)) if aps else None,
            "queries": len(right), "no_person": no_person, "no_match": no_match}
