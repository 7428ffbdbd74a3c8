"""Tiny synthetic camera clips for the video tests: people (striped, person-shaped figures) walking across a
textured, static background, written with ``cv2.VideoWriter``, and their ground truth in MOT rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Walker:
    """One person's pass: identity ``pid`` walks from ``start`` to ``end`` (top-left corners) over frames
    ``first..last``, at ``height`` pixels tall."""

    pid: int
    first: int
    last: int
    start: tuple[float, float]
    end: tuple[float, float]
    height: int = 120


def palette(pid: int) -> list[tuple[int, int, int]]:
    """Three BGR stripe colours, fixed per identity."""
    rng = np.random.default_rng(1000 + pid)
    return [tuple(int(c) for c in rng.integers(30, 256, 3)) for _ in range(3)]


def background(width: int, height: int, seed: int) -> np.ndarray:
    """A static, textured BGR scene (smooth blotches and a floor gradient)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    bg = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0, 40, height, dtype=np.float32)[:, None, None]
    return np.clip(bg.astype(np.float32) * 0.7 + ramp, 0, 255).astype(np.uint8)


def draw_person(frame: np.ndarray, pid: int, x: int, y: int, h: int) -> None:
    """A head and a striped body, ``h`` tall (about 2.7 times as tall as wide), top-left at ``(x, y)``."""
    w = max(6, int(h / 2.7))
    colours = palette(pid)
    head = h // 6
    cv2.ellipse(frame, (x + w // 2, y + head // 2), (max(2, w // 4), head // 2), 0, 0, 360, colours[0], -1)
    body_top = y + head
    stripe = max(1, (h - head) // 3)
    for i in range(3):
        cv2.rectangle(frame, (x, body_top + i * stripe), (x + w - 1, body_top + (i + 1) * stripe - 1), colours[i], -1)


def person_box(walker: Walker, frame: int) -> tuple[int, int, int, int]:
    """``(left, top, width, height)`` of ``walker`` in ``frame``."""
    t = (frame - walker.first) / max(1, walker.last - walker.first)
    x = walker.start[0] + t * (walker.end[0] - walker.start[0])
    y = walker.start[1] + t * (walker.end[1] - walker.start[1])
    h = walker.height
    return round(x), round(y), max(6, int(h / 2.7)), h


def render_clip(path: Path, walkers: list[Walker], frames: int, *, size: tuple[int, int] = (320, 240),
                fps: float = 25.0, seed: int = 0, infrared: bool = False,
                fourcc: str = "mp4v") -> list[tuple[int, int, int, int, int, int]]:
    """Write the clip; return its ground truth ``(frame (1-based), pid, left, top, width, height)`` rows."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), f"cannot write {path}"
    bg = background(width, height, seed)
    rng = np.random.default_rng(seed + 7)
    gt = []
    for f in range(frames):
        frame = bg.copy()
        for walker in walkers:
            if walker.first <= f <= walker.last:
                x, y, w, h = person_box(walker, f)
                draw_person(frame, walker.pid, x, y, h)
                left, top = max(0, x), max(0, y)
                right, bottom = min(width, x + w), min(height, y + h)
                if right > left and bottom > top:
                    gt.append((f + 1, walker.pid, left, top, right - left, bottom - top))
        noise = rng.normal(0, 2.0, frame.shape)
        frame = np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        if infrared:
            frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        writer.write(frame)
    writer.release()
    return gt


def write_gt(path: Path, rows: list[tuple[int, int, int, int, int, int]]) -> Path:
    """MOTChallenge ``gt.txt``: ``frame,id,left,top,width,height,1,1,1``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f},{i},{x},{y},{w},{h},1,1,1\n" for f, i, x, y, w, h in rows))
    return path


def two_walkers(frames: int = 60, width: int = 320) -> list[Walker]:
    """Two people crossing a 320x240 scene in opposite directions, one above the other (they never overlap)."""
    return [Walker(1, 0, frames - 1, (20, 10), (width - 80, 14), 96),
            Walker(2, 5, frames - 1, (width - 70, 128), (30, 124), 100)]
