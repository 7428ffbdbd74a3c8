"""Who walks where and when in the synthetic camera video: one straight pass per person and camera.

Every person of the clip set walks once across several RGB cameras and at least one infrared camera of the
SYSU-MM01 layout, so every infrared track has RGB tracks of the same person to be found. A pass enters the
frame from one side and leaves it on the other, on a slanted line over the floor, so the person's apparent
size changes along the way (a simple ground-plane perspective: the lower the feet, the nearer and the larger).
Passes on one camera overlap in time and cross each other, which gives occlusions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.records import SYSU_IR_CAMS, SYSU_RGB_CAMS

TAG_VIDEO_PLAN = 21  # random-stream tag of the pass plan (the still images use 11..16)
NEAR_HEIGHT = 0.625  # person height / frame height with the feet at the bottom edge (300 px of 480)
FAR_HEIGHT = 0.27  # ... with the feet at the far end of the walkable floor (130 px of 480)
FLOOR = (0.55, 1.0)  # foot rows of the walkable floor, as fractions of the frame height
WALK_SPEED = 0.8  # person heights per second, about 1.4 m/s for a 1.75 m person
WIDTH_FRACTION = 0.5  # half the widest sprite (arms, bag, stride) in person heights, to start off frame


@dataclass(frozen=True)
class Pass:
    """One person walking once across one camera's view.

    Attributes:
        pid: Global person id (>= 1), the same on every camera.
        camid: Camera number.
        start: First frame of the pass (0-based).
        frames: Number of frames the pass lasts (>= 2).
        x: Centre-line column at the first and at the last frame, in pixels (both outside the frame).
        foot: Foot row at the first and at the last frame, in pixels.
        pose_seed: Seed of the pass's pose draw (viewpoint, walk cycle phase).
    """

    pid: int
    camid: int
    start: int
    frames: int
    x: tuple[float, float]
    foot: tuple[float, float]
    pose_seed: int

    def at(self, frame: int) -> tuple[float, float] | None:
        """Centre column and foot row at ``frame`` (0-based), or None outside the pass."""
        k = frame - self.start
        if not 0 <= k < self.frames:
            return None
        t = k / (self.frames - 1)
        return self.x[0] + t * (self.x[1] - self.x[0]), self.foot[0] + t * (self.foot[1] - self.foot[0])


def person_height(foot: float, height: int, stature: float) -> float:
    """Pixels from head to feet of a person of relative ``stature`` standing with the feet on row ``foot``."""
    lo, hi = FLOOR[0] * height, FLOOR[1] * height
    depth = (foot - lo) / (hi - lo)  # 0 at the far end of the floor, 1 at the bottom edge
    return height * (FAR_HEIGHT + depth * (NEAR_HEIGHT - FAR_HEIGHT)) * stature


def person_cameras(seed: int, pid: int) -> tuple[int, ...]:
    """The cameras person ``pid`` walks past: two or three RGB cameras and one or two infrared cameras."""
    rng = np.random.default_rng([seed, pid, 0, 1, TAG_VIDEO_PLAN])
    rgb = rng.choice(SYSU_RGB_CAMS, size=int(rng.integers(2, 4)), replace=False)
    ir = rng.choice(SYSU_IR_CAMS, size=int(rng.integers(1, 3)), replace=False)
    return tuple(sorted(int(c) for c in (*rgb, *ir)))


def plan_pass(seed: int, pid: int, camid: int, stature: float, frames: int, fps: float, width: int,
              height: int) -> Pass:
    """Draw person ``pid``'s pass across camera ``camid``; a function of its arguments only.

    The walk lasts as long as crossing the frame takes at a walking pace, but never longer than the clip (a
    short clip has fast walkers), and it starts at a random frame so that the whole pass lies in the clip.
    """
    rng = np.random.default_rng([seed, pid, camid, 2, TAG_VIDEO_PLAN])
    foot = tuple(float(rng.uniform(FLOOR[0], FLOOR[1]) * height) for _ in range(2))
    sizes = [person_height(f, height, stature) for f in foot]
    left_to_right = bool(rng.random() < 0.5)
    x_start = -WIDTH_FRACTION * sizes[0]
    x_end = width + WIDTH_FRACTION * sizes[1]
    if not left_to_right:
        x_start, x_end = width - x_start, width - x_end
    distance = abs(x_end - x_start)
    speed = WALK_SPEED * float(np.mean(sizes)) * float(rng.uniform(0.8, 1.25))  # pixels per second
    length = int(np.clip(round(distance / speed * fps), 2, frames))
    start = int(rng.integers(0, frames - length + 1))
    return Pass(pid=pid, camid=camid, start=start, frames=length, x=(float(x_start), float(x_end)),
                foot=(foot[0], foot[1]), pose_seed=int(rng.integers(2**31)))


def plan(seed: int, ids: int, frames: int, fps: float, width: int, height: int,
         statures: dict[int, float]) -> dict[int, list[Pass]]:
    """Every pass of the clip set, by camera (each camera's passes ordered by person id).

    Args:
        seed: Clip-set seed.
        ids: People 1..ids.
        frames: Frames per clip (>= 2).
        fps: Frame rate.
        width: Frame width.
        height: Frame height.
        statures: Person id -> relative stature (``Identity.height``).

    Returns:
        Camera number -> its passes, for all six cameras (a camera nobody passes has an empty list).
    """
    passes: dict[int, list[Pass]] = {c: [] for c in sorted((*SYSU_RGB_CAMS, *SYSU_IR_CAMS))}
    for pid in range(1, ids + 1):
        for camid in person_cameras(seed, pid):
            passes[camid].append(plan_pass(seed, pid, camid, statures[pid], frames, fps, width, height))
    return passes
