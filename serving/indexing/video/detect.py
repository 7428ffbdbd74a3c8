"""Find people in a frame: the :class:`Detector` interface and its default, background subtraction.

Fixed surveillance cameras see a static scene, so what moves is (mostly) people. :class:`BackgroundDetector`
needs no weights and works alike on RGB and thermal video: OpenCV's MOG2 (or KNN) subtractor on a downscaled
frame, shadows off, a morphological opening against noise and a closing that joins a body's parts, then
connected components kept when they are person-shaped (tall, not tiny). The subtraction runs on colour where
there is colour; still, a garment of the floor's colour (or, in thermal video, its temperature) cuts a body into
pieces, so pieces stacked in one column are joined while the whole stays person-shaped. A blob as
wide as two or more people side by side (people walking together, one occluding another) is cut at the
emptiest columns near the widths a person would have, and one as tall as two people above one another (a near
and a far one) at the narrowest rows. Each box gets a confidence that ByteTrack's two stages
use: a person-shaped box (or a slice of a person entering at the side) may start a track, an oddly shaped one
only continue one.

A user's own model plugs in as another :class:`Detector` (:mod:`serving.indexing.video.onnx_detect` runs a
YOLO export); :func:`serving.indexing.video.setup.build_detector` picks one from the command line's
``--detector``.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from serving.core import opencv_limits  # noqa: F401  (OpenCV's decoder limits, before cv2 loads)
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

#: The background subtractors ``--detector`` names (anything else is an ONNX file).
SUBTRACTORS: tuple[str, ...] = ("mog2", "knn")
#: Confidence of a person-shaped box, of a guess (a blob cut into people, a person half in view at the side;
#: both may start a track, ranked below sure boxes), and of a doubtful box (may only continue a track).
SURE, GUESS, DOUBTFUL = 0.9, 0.75, 0.45
#: A blob flatter than this (height / width) is no group of people side by side.
FLAT = 0.6
#: Pieces stacked in one column are joined into one person while the whole stays at most this tall for its
#: width (a person is about 2.5; two people one above the other are 5 or more).
MOST_ASPECT = 3.8
#: More foreground pieces than this in one frame are noise, not people in pieces: they are not joined.
MAX_PIECES = 64


@dataclass
class Boxes:
    """Detections of one frame.

    Attributes:
        xyxy: float32 ``[N, 4]`` boxes ``(left, top, right, bottom)`` in frame pixels.
        confidence: float32 ``[N]`` in [0, 1].
    """

    xyxy: np.ndarray
    confidence: np.ndarray

    @classmethod
    def empty(cls) -> Boxes:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.xyxy)


class Detector(Protocol):
    """Finds people in BGR frames of one camera (a detector may keep state across frames: one per video)."""

    name: str

    def detect(self, frame: np.ndarray) -> Boxes:
        """The people in ``frame`` (uint8 BGR ``[H, W, 3]``)."""
        ...


class BackgroundDetector:
    """Background subtraction: moving, person-shaped blobs (module docstring).

    Args:
        method: ``mog2`` or ``knn`` (OpenCV's subtractors).
        scale: the frame is subtracted at this fraction of its size (0.5: a quarter of the pixels).
        min_height: smallest person, as a fraction of the frame height.
        aspect: ``(min, max)`` height / width of a whole person.
        person_aspect: the typical height / width, for cutting wide blobs into people.
        history: frames the background model remembers (a person standing still longer becomes background).
    """

    def __init__(self, method: str = "mog2", *, scale: float = 0.5, min_height: float = 0.08,
                 aspect: tuple[float, float] = (1.3, 5.0), person_aspect: float = 2.6, history: int = 500) -> None:
        import cv2

        if method not in SUBTRACTORS:
            raise UserError(f"unknown background subtractor {method!r}; valid: {', '.join(SUBTRACTORS)}")
        if not 0.1 <= scale <= 1.0:
            raise UserError(f"the detector's scale must be in [0.1, 1], got {scale}")
        self.name = method
        self.scale, self.min_height, self.aspect, self.person_aspect = scale, min_height, aspect, person_aspect
        if method == "mog2":
            self._subtractor = cv2.createBackgroundSubtractorMOG2(history=history, varThreshold=16,
                                                                  detectShadows=False)
        else:
            self._subtractor = cv2.createBackgroundSubtractorKNN(history=history, dist2Threshold=400.0,
                                                                 detectShadows=False)
        self._rate = -1.0  # OpenCV's automatic rate until :meth:`prime` gives a background to start from
        self._frames = 0
        self._open = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 9))

    def _small(self, frame: np.ndarray) -> np.ndarray:
        """The frame at the working scale; colour stays (a garment and the floor may share a grey level)."""
        import cv2

        if self.scale == 1.0:
            return frame
        return cv2.resize(frame, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)

    def prime(self, background: np.ndarray, repeats: int = 10) -> None:
        """Start from a known empty scene (e.g. the median of frames sampled over a clip).

        Without it the model learns the first frames as background, so a person already in view at the start
        leaves a ghost and is missed until it has moved away; primed, it learns at the steady rate
        ``1 / history`` from the first frame on. (The scene is shown ``repeats`` times: KNN needs several
        samples of each pixel before it calls anything background.)
        """
        small = self._small(background)
        for _ in range(repeats):
            self._subtractor.apply(small, learningRate=-1.0)
        self._rate = 1.0 / self._subtractor.getHistory()
        self._frames = 1

    def foreground(self, frame: np.ndarray) -> np.ndarray:
        """The cleaned foreground mask (uint8 0/255) at the working scale."""
        import cv2

        mask = self._subtractor.apply(self._small(frame), learningRate=self._rate)
        self._frames += 1
        if self._frames == 1:  # an unprimed model's first frame is all foreground: nothing is known yet
            mask[:] = 0
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._open)
        return cv2.morphologyEx(mask, cv2.MORPH_CLOSE, self._close)

    def detect(self, frame: np.ndarray) -> Boxes:
        """Person-shaped foreground blobs of ``frame`` in frame pixels."""
        import cv2

        mask = self.foreground(frame)
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_h = self.min_height * mask.shape[0]
        boxes: list[tuple[float, float, float, float, float]] = []
        for members in _pieces_of_people(stats, min_area=0.02 * min_h * min_h, most_aspect=MOST_ASPECT):
            x, y = (int(stats[members, i].min()) for i in (0, 1))
            w = int((stats[members, 0] + stats[members, 2]).max()) - x
            h = int((stats[members, 1] + stats[members, 3]).max()) - y
            if h < min_h or int(stats[members, 4].sum()) < 0.25 * min_h * min_h / self.person_aspect:
                continue
            blob = np.isin(labels[y:y + h, x:x + w], members)
            boxes += self._people(blob, x, y, mask.shape)
        if not boxes:
            return Boxes.empty()
        arr = np.asarray(boxes, np.float32)
        arr[:, :4] /= self.scale
        return Boxes(arr[:, :4], arr[:, 4])

    def _people(self, blob: np.ndarray, x: int, y: int,
                shape: tuple[int, ...]) -> list[tuple[float, float, float, float, float]]:
        """The people in one blob: itself, or its parts when it is as wide as several people side by side."""
        h, w = blob.shape
        side = x <= 0 or x + w >= shape[1]  # someone entering or leaving shows a thin slice: not two people
        if h / w > self.aspect[1] and not side:  # taller than a person: one above the other (near and far)
            return self._stacked(blob, x, y, shape)
        # As many people as the blob is wide, counting a blob 1.4 people wide as two (a walker with legs apart is
        # at most about 1.3 people wide; two people overlapping by half are 1.5). Flatter than four people in a
        # row, it is no group of people (a car, a shadow): left whole, and doubtful.
        parts = int(w * self.person_aspect / h + 0.6)
        if parts < 2 or h / w < FLAT:
            return [self._box(blob, x, y, shape, split=False)]
        columns = blob.sum(axis=0).astype(np.float32)
        cuts, step = [0], w / parts
        for i in range(1, parts):
            # Cut at the emptiest column near where an evenly spaced cut would fall (the gap between people).
            a, b = int(i * step - step / 3), int(i * step + step / 3) + 1
            cuts.append(a + int(np.argmin(columns[a:b])))
        cuts.append(w)
        out = []
        for a, b in itertools.pairwise(cuts):
            part = blob[:, a:b]
            if part.any():
                out.append(self._box(part, x + a, y, shape, split=True))
        return out

    def _stacked(self, blob: np.ndarray, x: int, y: int,
                 shape: tuple[int, ...]) -> list[tuple[float, float, float, float, float]]:
        """A blob too tall for one person cut into people at its narrowest rows (a head meeting the feet above)."""
        h, w = blob.shape
        parts = max(2, round(h / (w * self.person_aspect)))
        rows = blob.sum(axis=1).astype(np.float32)
        cuts, step = [0], h / parts
        for i in range(1, parts):
            a, b = int(i * step - step / 3), int(i * step + step / 3) + 1
            cuts.append(a + int(np.argmin(rows[a:b])))
        cuts.append(h)
        min_h = self.min_height * shape[0]
        return [self._box(blob[a:b], x, y + a, shape, split=True)
                for a, b in itertools.pairwise(cuts) if b - a >= min_h and blob[a:b].any()]

    def _box(self, blob: np.ndarray, x: int, y: int, shape: tuple[int, ...],
             split: bool) -> tuple[float, float, float, float, float]:
        """A blob's tight box and confidence: sure when person-shaped and clear of the frame edge."""
        rows = np.flatnonzero(blob.any(axis=1))
        cols = np.flatnonzero(blob.any(axis=0))
        top, bottom = y + int(rows[0]), y + int(rows[-1]) + 1
        left, right = x + int(cols[0]), x + int(cols[-1]) + 1
        h, w = bottom - top, right - left
        lo, hi = self.aspect
        aspect = h / max(w, 1)
        side = left <= 0 or right >= shape[1]
        if lo <= aspect <= hi:
            confidence = GUESS if split else SURE
        elif side and aspect > hi:
            confidence = GUESS  # a person half in view at the side: may start the track that follows them in
        else:
            confidence = DOUBTFUL
        return float(left), float(top), float(right), float(bottom), confidence




def _pieces_of_people(stats: np.ndarray, min_area: float, most_aspect: float) -> list[list[int]]:
    """Connected-component labels (rows of OpenCV's ``x, y, w, h, area`` stats, 0 = background) grouped into
    people: two groups join when one's columns overlap the other's by half the narrower one, the gap between them
    is under a third of the joint height, and the joint box is still person-shaped (height / width at most
    ``most_aspect``, at least 1). Specks under ``min_area`` join nothing."""
    groups = [[label] for label in range(1, len(stats)) if stats[label, 4] >= min_area]

    def box(group: list[int]) -> tuple[int, int, int, int]:
        rows = stats[group]
        return (int(rows[:, 0].min()), int(rows[:, 1].min()), int((rows[:, 0] + rows[:, 2]).max()),
                int((rows[:, 1] + rows[:, 3]).max()))

    joined = len(groups) <= MAX_PIECES  # a frame of noise (a camera shaken, a light switched): no joining
    while joined:
        joined = False
        for i, j in itertools.combinations(range(len(groups)), 2):
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box(groups[i]), box(groups[j])
            overlap = min(ax1, bx1) - max(ax0, bx0)
            x0, y0, x1, y1 = min(ax0, bx0), min(ay0, by0), max(ax1, bx1), max(ay1, by1)
            gap = max(ay0, by0) - min(ay1, by1)
            if overlap >= 0.5 * min(ax1 - ax0, bx1 - bx0) and gap <= 0.35 * (y1 - y0) \
                    and 1.0 <= (y1 - y0) / (x1 - x0) <= most_aspect:
                groups[i] += groups.pop(j)
                joined = True
                break
    return groups
