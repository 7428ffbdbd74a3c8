"""Cut a track where its box starts following someone else: the hand-over that motion-only tracking makes.

ByteTrack links boxes by overlap and motion alone. When two people meet (one leaves the picture where another
comes in, or they cross and their blobs merge for a moment), the track may come out of the meeting on the other
person, and the gallery would then hold one "track" of two people. :class:`AppearanceGuard` keeps, per track, a
running colour signature of the box (a 64-bin colour histogram of its upper and of its lower half, the classic
clothing descriptor), learnt from clean boxes only: person-shaped, clear of the other boxes and of the frame's
sides, so neither a merged blob nor a half-hidden person. A clean box unlike the signature for ``patience``
frames in a row is someone else: the track gets a new id from there on. Unclean boxes neither update nor cut.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

#: Histogram distance (1 - intersection, 0..1) above which a box is unlike its track.
CHANGE = 0.3
#: Clean, unlike frames in a row before the track is cut.
PATIENCE = 5
#: Height / width of a box that holds one whole person (a merged blob is wider, a slice at the side thinner).
PERSON = (2.0, 4.5)
#: Overlap with another box (fraction of this box) above which a box is not clean.
CLEAR = 0.1
_EMA = 0.1


def signature(frame: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """Colour histograms (4 levels per channel, 64 bins) of the box's upper and lower halves, each summing to 1."""
    left, top, right, bottom = (round(float(v)) for v in box)
    patch = frame[max(0, top):max(0, bottom), max(0, left):max(0, right)]
    if patch.shape[0] < 4 or patch.shape[1] < 2:
        return None
    if patch.ndim == 2:
        patch = np.repeat(patch[:, :, None], 3, axis=2)
    half = patch.shape[0] // 2
    parts = []
    for part in (patch[:half], patch[half:]):
        q = (part[:, :, :3] >> 6).reshape(-1, 3).astype(np.int64)
        hist = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)
        parts.append(hist / max(1.0, float(hist.sum())))
    return np.concatenate(parts)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - the mean histogram intersection of the two halves (0: the same colours, 1: none shared)."""
    return float(1.0 - np.minimum(a, b).sum() / 2.0)


@dataclass
class _Track:
    out: int
    signature: np.ndarray | None = None
    seen: int = 0
    strikes: list[np.ndarray] = field(default_factory=list)


class AppearanceGuard:
    """Maps the tracker's ids to ids that never span two people (module docstring)."""

    def __init__(self, change: float = CHANGE, patience: int = PATIENCE) -> None:
        self.change, self.patience = change, patience
        self._tracks: dict[int, _Track] = {}
        self._next = itertools.count(1)
        self.cuts = 0

    def ids(self, frame: np.ndarray, tracker_ids: np.ndarray, xyxy: np.ndarray, covered: np.ndarray) -> np.ndarray:
        """The output ids of one frame's tracked boxes (``covered``: each box's overlap with the others)."""
        out = np.empty(len(tracker_ids), np.int64)
        for j, (tid, box) in enumerate(zip(tracker_ids.tolist(), xyxy)):
            out[j] = self._one(frame, int(tid), box, float(covered[j]))
        return out

    def _one(self, frame: np.ndarray, tid: int, box: np.ndarray, covered: float) -> int:
        state = self._tracks.get(tid)
        if state is None:
            state = self._tracks[tid] = _Track(next(self._next))
        sig = signature(frame, box) if _clean(box, covered, frame.shape[1]) else None
        if sig is None:
            return state.out
        if state.signature is not None and state.seen >= self.patience \
                and distance(sig, state.signature) > self.change:
            state.strikes.append(sig)
            if len(state.strikes) >= self.patience:  # someone else, for long enough: a new track from here
                self.cuts += 1
                state.out, state.signature = next(self._next), np.mean(state.strikes, axis=0)
                state.seen, state.strikes = len(state.strikes), []
            return state.out
        state.strikes = []
        state.signature = sig if state.signature is None else (1 - _EMA) * state.signature + _EMA * sig
        state.seen += 1
        return state.out


def _clean(box: np.ndarray, covered: float, width: int) -> bool:
    """One whole person: person-shaped, clear of the other boxes and of the frame's sides."""
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    return covered <= CLEAR and w > 0 and PERSON[0] <= h / w <= PERSON[1] and box[0] > 1 and box[2] < width - 1
