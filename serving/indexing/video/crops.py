"""Choose a few good crops of each track: large, sharp, whole, unoccluded and spread over the track's life.

A track seen for a minute has 1500 boxes; a handful of them describe the person as well as all of them
(set-to-set re-ID pools a few frames), and embedding only those keeps ingestion faster than real time.
While the track runs, :class:`TrackLog` keeps a bounded sample of candidates spread evenly over its life
(every ``stride``-th frame; when the sample is full, every other one is dropped and the stride doubles), each
with its quality measures and its pixels already cut and resized to the model's input. When the track is over,
:func:`choose` splits its life into ``k`` equal spans and takes the best candidate of each: a crop touching the
frame edge (a cut-off person), overlapping another box (a hidden one) or far from the track's usual size (two
people merged into one blob, half a person) only when nothing else is left, then
the largest and sharpest (variance of the Laplacian, the usual focus measure: Pech-Pacheco et al., ICPR 2000).

Crops are cut around the box at the model's aspect ratio with a small margin, as the training crops frame a
person (a whole figure, centred, about nine tenths of the crop's height), then resized like every other
crop the server embeds (``cv2.INTER_LINEAR``, RGB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from serving.core import opencv_limits  # noqa: F401  (OpenCV's decoder limits, before cv2 loads)

#: Crops chosen per track unless asked otherwise.
DEFAULT_K = 4
#: Margin added above and below the box, as a fraction of its height (the training crops' framing).
MARGIN = 0.04
#: Pixels from the frame border within which a box counts as cut by the edge.
EDGE_PX = 2
#: Overlap (intersection over the box's own area) above which a box counts as occluded.
OCCLUDED = 0.15
#: Relative difference from the track's median width or height above which a box is of an odd size.
ODD_SIZE = 0.25


def crop_region(box: np.ndarray | list[float], aspect: float, frame_shape: tuple[int, ...],
                margin: float = MARGIN) -> tuple[int, int, int, int]:
    """The region cut for ``box``: centred on it, ``aspect`` = height / width, ``margin`` above and below,
    clipped to the frame. Returns integer ``(left, top, right, bottom)``."""
    left, top, right, bottom = (float(v) for v in box)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    height = max(1.0, bottom - top) * (1 + 2 * margin)
    width = max(max(1.0, right - left) * (1 + margin), height / aspect)
    height = max(height, width * aspect)
    fh, fw = frame_shape[:2]
    x0, y0 = int(max(0, math.floor(cx - width / 2))), int(max(0, math.floor(cy - height / 2)))
    x1, y1 = int(min(fw, math.ceil(cx + width / 2))), int(min(fh, math.ceil(cy + height / 2)))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def cut(frame: np.ndarray, box: np.ndarray | list[float], height: int, width: int) -> np.ndarray:
    """The model-input crop of ``box``: uint8 RGB ``[height, width, 3]`` (see :func:`crop_region`)."""
    import cv2

    x0, y0, x1, y1 = crop_region(box, height / width, frame.shape)
    patch = frame[y0:y1, x0:x1]
    if patch.ndim == 2 or patch.shape[2] == 1:
        patch = cv2.cvtColor(patch, cv2.COLOR_GRAY2BGR)
    patch = cv2.cvtColor(patch, cv2.COLOR_BGR2RGB)
    return cv2.resize(patch, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def sharpness(frame: np.ndarray, box: np.ndarray) -> float:
    """Variance of the Laplacian of the box's grey pixels (higher: sharper)."""
    import cv2

    x0, y0, x1, y1 = (round(float(v)) for v in box)
    patch = frame[max(0, y0):max(y0 + 1, y1), max(0, x0):max(x0 + 1, x1)]
    if patch.size == 0:
        return 0.0
    grey = cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY) if patch.ndim == 3 else patch
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())


def overlaps(xyxy: np.ndarray) -> np.ndarray:
    """For each box, the largest fraction of its area covered by another box of the same frame."""
    n = len(xyxy)
    if n < 2:
        return np.zeros(n, np.float32)
    lt = np.maximum(xyxy[:, None, :2], xyxy[None, :, :2])
    rb = np.minimum(xyxy[:, None, 2:], xyxy[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    np.fill_diagonal(inter, 0)
    area = np.prod(np.clip(xyxy[:, 2:] - xyxy[:, :2], 1e-6, None), axis=1)
    return (inter.max(axis=1) / area).astype(np.float32)


def touches_edge(box: np.ndarray, frame_shape: tuple[int, ...], px: int = EDGE_PX) -> bool:
    """Whether ``box`` reaches within ``px`` pixels of the frame border (the person is probably cut off)."""
    height, width = frame_shape[:2]
    left, top, right, bottom = (float(v) for v in box)
    return left <= px or top <= px or right >= width - px or bottom >= height - px


@dataclass
class Candidate:
    """One possible crop of a track.

    Attributes:
        frame: frame number (from 0).
        box: the tracked box ``(left, top, right, bottom)``, whole pixels.
        area: the box's area in pixels.
        sharpness: variance of the Laplacian inside the box.
        edge: the box touches the frame border.
        occluded: the largest fraction of the box covered by another box.
        pixels: the model-input crop, uint8 RGB ``[H, W, 3]``.
        odd: the box's width or height is far from the track's median (set by :func:`choose`).
    """

    frame: int
    box: tuple[int, int, int, int]
    area: float
    sharpness: float
    edge: bool
    occluded: float
    pixels: np.ndarray

    odd: bool = False

    @property
    def doubtful(self) -> bool:
        """Cut by the edge, partly hidden, or not the track's usual size (two people merged, half a person)."""
        return self.edge or self.occluded > OCCLUDED or self.odd

    def rank_key(self) -> tuple[bool, bool, float]:
        """Sort key, best first: whole, unoccluded and of the track's usual size, then large and sharp."""
        score = math.log(max(self.area, 1.0)) + 0.5 * math.log1p(max(self.sharpness, 0.0))
        return self.edge, self.occluded > OCCLUDED or self.odd, -score


@dataclass
class TrackLog:
    """One track's life (first and last frame, boxes) and its sample of :class:`Candidate` s (module docstring).

    Args:
        track: the tracker's id.
        first: the frame it was first seen in.
        capacity: the most candidates kept (an even sample of the track's life).
    """

    track: int
    first: int
    capacity: int = 32
    last: int = -1
    last_box: np.ndarray | None = None  # the box in frame ``last`` (xyxy)
    boxes: int = 0
    stride: int = 1
    candidates: list[Candidate] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last = self.first

    def seen(self, frame: int) -> bool:
        """Record a box in ``frame``; True when the frame falls on the sample's stride (then :meth:`add` it)."""
        self.last, self.boxes = frame, self.boxes + 1
        return (frame - self.first) % self.stride == 0

    def add(self, candidate: Candidate) -> None:
        """Keep ``candidate``; thin the sample to every other one (and double the stride) when it is full."""
        self.candidates.append(candidate)
        if len(self.candidates) > self.capacity:
            self.candidates = [c for c in self.candidates if (c.frame - self.first) % (2 * self.stride) == 0]
            self.stride *= 2


def observe(log: TrackLog, frame: np.ndarray, index: int, box: np.ndarray, occluded: float,
            height: int, width: int) -> None:
    """Record track ``log``'s box in frame ``index`` and, on the sample's stride, measure and keep it."""
    log.last_box = box
    if not log.seen(index):
        return
    whole = tuple(round(float(v)) for v in box)
    area = float(max(0, whole[2] - whole[0]) * max(0, whole[3] - whole[1]))
    log.add(Candidate(frame=index, box=whole, area=area, sharpness=sharpness(frame, box),
                      edge=touches_edge(box, frame.shape), occluded=float(occluded),
                      pixels=cut(frame, box, height, width)))


def choose(candidates: list[Candidate], k: int, first: int, last: int) -> list[Candidate]:
    """The best candidate of each of ``k`` equal spans of the life ``first..last`` (module docstring).

    A span without candidates gives its place to the best remaining candidate anywhere, so a track yields
    ``min(k, len(candidates))`` crops, in frame order.
    """
    if k <= 0 or not candidates:
        return []
    widths = np.array([c.box[2] - c.box[0] for c in candidates], np.float32)
    heights = np.array([c.box[3] - c.box[1] for c in candidates], np.float32)
    mw, mh = float(np.median(widths)), float(np.median(heights))
    for c, w, h in zip(candidates, widths, heights):
        c.odd = abs(w - mw) > ODD_SIZE * mw or abs(h - mh) > ODD_SIZE * mh
    span = (last - first + 1) / k
    bins: list[list[Candidate]] = [[] for _ in range(k)]
    for c in candidates:
        bins[min(k - 1, int((c.frame - first) / span))].append(c)
    chosen = [min(b, key=Candidate.rank_key) for b in bins if b]
    taken = {id(c) for c in chosen}
    rest = sorted((c for c in candidates if id(c) not in taken), key=Candidate.rank_key)
    extra = rest[:k - len(chosen)]
    chosen += extra
    rest = rest[len(extra):]
    # Wholeness before spread: a cut-off or hidden span winner gives way to a whole crop from anywhere.
    for i, c in enumerate(chosen):
        if c.doubtful and rest and rest[0].rank_key() < c.rank_key():
            chosen[i] = rest.pop(0)
    return sorted(chosen, key=lambda c: c.frame)
