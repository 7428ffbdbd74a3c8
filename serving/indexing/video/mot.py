"""Boxes of tracks in the MOTChallenge text format, read (``--tracks-from``) and written (``--mot-out``).

One line per box: ``frame,id,left,top,width,height,conf,x,y,z`` with 1-based frame numbers (the format's
convention; everything else here counts frames from 0). A ground-truth file's seventh column is its
"consider" flag: rows with 0 there are ignored, as the MOTChallenge evaluation ignores them.

A written track is continuous: where the tracker carried a track over frames without a box (the person hidden
behind another, or missed by the detector) :func:`write_gap_rows` fills the gap by linear interpolation of the
boxes at its two ends, the post-processing ByteTrack's own MOTChallenge results use. Those rows are written when
the track is seen again, after the rows of the frames between: the file is grouped by track life, not sorted by
frame (the MOTChallenge evaluators and :func:`read_mot` group rows by frame themselves).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TextIO

import numpy as np

from xmreid.errors import UserError


def read_mot(path: str | Path) -> dict[int, list[tuple[int, np.ndarray]]]:
    """``{frame (from 0): [(track id, xyxy float32 [4]), ...]}`` from a MOT file.

    Raises:
        UserError: the file is missing or a line is not ``frame,id,left,top,width,height,...`` numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--tracks-from {path}: no such file")
    boxes: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(" ", "").split(",")
        try:
            frame, track = int(float(fields[0])), int(float(fields[1]))
            left, top, width, height = (float(v) for v in fields[2:6])
            consider = float(fields[6]) if len(fields) > 6 else 1.0
        except (ValueError, IndexError):
            raise UserError(f"{path}:{number} is not a MOT line (frame,id,left,top,width,height,...): "
                            f"{line.strip()[:80]!r}") from None
        if consider == 0 or width <= 0 or height <= 0 or frame < 1:
            continue
        boxes[frame - 1].append((track, np.array([left, top, left + width, top + height], np.float32)))
    return dict(boxes)


def write_mot_rows(out: TextIO, frame: int, track_ids: np.ndarray, xyxy: np.ndarray,
                   confidence: np.ndarray | None = None) -> None:
    """Append one frame's tracked boxes (``frame`` from 0) as MOT lines ``frame+1,id,l,t,w,h,conf,-1,-1,-1``."""
    for i, (track, box) in enumerate(zip(track_ids.tolist(), xyxy.tolist())):
        conf = 1.0 if confidence is None else float(confidence[i])
        left, top, right, bottom = box
        out.write(f"{frame + 1},{track},{left:.1f},{top:.1f},{right - left:.1f},{bottom - top:.1f},"
                  f"{conf:.3f},-1,-1,-1\n")


def write_gap_rows(out: TextIO, track: int, start: tuple[int, np.ndarray], end: tuple[int, np.ndarray],
                   confidence: float) -> int:
    """Write the boxes of ``track`` in the frames strictly between ``start`` and ``end`` (each ``(frame from 0,
    xyxy)``), linearly interpolated between the two; returns how many rows were written."""
    (first, box0), (last, box1) = start, end
    gap = last - first
    if gap < 2:
        return 0
    box0, box1 = np.asarray(box0, np.float64), np.asarray(box1, np.float64)
    for step in range(1, gap):
        t = step / gap
        write_mot_rows(out, first + step, np.array([track]), ((1 - t) * box0 + t * box1)[None],
                       np.array([confidence]))
    return gap - 1
