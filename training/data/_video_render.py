"""Draw the frames of one synthetic camera clip: static scene, walking people, sensor noise, and ground truth.

A person's look on a pass is drawn once, as a few walk-cycle sprites (colour or thermal levels and a soft
silhouette mask) painted by the still-image generator's own painter, so the video keeps the generator's
contract: identity only through modality-invariant cues, infrared never showing RGB colour. Each frame
resizes the current sprite to the person's height at that point of the floor and pastes the people far to
near (by foot row), so nearer people occlude farther ones. The same masks give the ground truth: the full
body box clipped to the frame, and the visible fraction of the body after occlusion and frame cropping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from training.data._camera import CameraProfile
from training.data._identity import Identity
from training.data._render import paint_person, person_labels, person_pose
from training.data._video_scene import WIDTH_FRACTION, Pass, person_height

WALK_POSES = 4  # sprites per walk cycle
POSE_SECONDS = 0.12  # how long each walk-cycle pose shows
MASK_LEVEL = 0.5  # alpha above which a pixel counts as the person's (visibility, occlusion)
NOISE_FACTOR = 0.5  # frame noise relative to the still images' sensor noise: "mild"
NOISE_FRAMES = 8  # noise frames drawn per clip (see noise_bank)


@dataclass(frozen=True)
class Sprite:
    """One pose of one person as one camera sees it.

    Attributes:
        img: float32 ``[h, w, C]`` appearance in 0..1 (C = 3 for RGB, 1 for infrared).
        alpha: float32 ``[h, w]`` soft silhouette mask in 0..1.
        centre: Column of the body's centre line in the sprite.
        foot: Row of the soles in the sprite.
        ph: Person height in pixels the sprite was drawn at.
    """

    img: np.ndarray
    alpha: np.ndarray
    centre: float
    foot: float
    ph: float


def render_sprites(p: Identity, cam: CameraProfile, ph: float, pose_seed: int, difficulty: float,
                   mirror: bool) -> list[Sprite]:
    """The walk cycle of person ``p`` on one pass, drawn at ``ph`` pixels tall (the pass's largest size).

    Args:
        p: The person.
        cam: The camera (modality and viewpoint).
        ph: Person height in pixels to draw at; frames only shrink it (or enlarge it slightly).
        pose_seed: Seed of the pass's viewpoint draw.
        difficulty: Nuisance scale of the pose draw, as for the still images.
        mirror: Draw the person facing the other way (walking right to left).

    Returns:
        ``WALK_POSES`` sprites, cropped to the silhouette.
    """
    base = person_pose(cam, np.random.default_rng(pose_seed), difficulty)
    height = math.ceil(ph * 1.06) + 4
    width = math.ceil(ph * 2 * WIDTH_FRACTION) + 4
    cx, y0 = width / 2.0, 0.03 * ph + 2  # room above the head for a hat
    sprites = []
    for k in range(WALK_POSES):
        phase = 2 * math.pi * k / WALK_POSES
        swing = 0.15 * math.sin(phase)
        pose = dict(base, stride=0.02 + 0.04 * (1 - math.cos(2 * phase)), arm_l=0.12 + swing, arm_r=0.12 - swing)
        lab = person_labels(p, height, width, cx, y0, ph, pose)
        img = paint_person(p, lab, cx, y0, ph, cam.modality == "rgb")
        alpha = cv2.GaussianBlur((lab > 0).astype(np.float32), (3, 3), 0.6)
        rows = np.flatnonzero(alpha.max(axis=1) > 0.02)
        cols = np.flatnonzero(alpha.max(axis=0) > 0.02)
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        img, alpha, centre = img[r0:r1, c0:c1], alpha[r0:r1, c0:c1], cx - c0
        if mirror:
            img, alpha, centre = img[:, ::-1], alpha[:, ::-1], (c1 - c0) - centre
        sprites.append(Sprite(img=np.ascontiguousarray(img), alpha=np.ascontiguousarray(alpha),
                              centre=float(centre), foot=float(y0 + ph - r0), ph=float(ph)))
    return sprites


def pass_sprites(p: Identity, cam: CameraProfile, walk: Pass, height: int, difficulty: float) -> list[Sprite]:
    """The sprites of one pass, drawn at the largest size the person reaches on it."""
    ph = max(person_height(f, height, p.height) for f in walk.foot)
    return render_sprites(p, cam, ph, walk.pose_seed, difficulty, mirror=walk.x[1] < walk.x[0])


def _place(sprite: Sprite, x: float, foot: float, ph: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The sprite resized to ``ph`` and its top-left corner in the frame."""
    s = ph / sprite.ph
    h, w = sprite.alpha.shape
    size = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    img = cv2.resize(sprite.img, size, interpolation=interp).reshape(size[1], size[0], -1)
    alpha = cv2.resize(sprite.alpha, size, interpolation=interp)
    return round(x - sprite.centre * s), round(foot - sprite.foot * s), img, alpha


def compose(frame: int, walks: list[Pass], sprites: dict[int, list[Sprite]], people: dict[int, Identity],
            background: np.ndarray, fps: float) -> tuple[np.ndarray, list[tuple[int, int, int, int, int, float]]]:
    """Paste the people present at ``frame`` over the scene and measure what is seen of each.

    Args:
        frame: Frame index (0-based).
        walks: The camera's passes.
        sprites: Person id -> that person's sprites on this camera.
        people: Person id -> identity (for the stature).
        background: float32 ``[H, W, C]`` scene.
        fps: Frame rate (paces the walk cycle).

    Returns:
        The float32 frame ``[H, W, C]`` before sensor effects, and one ground-truth row
        ``(pid, left, top, width, height, visibility)`` per person with any pixel visible.
    """
    out = background.copy()
    fh, fw = out.shape[:2]
    owner = np.full((fh, fw), -1, np.int32)
    present = []
    for walk in walks:
        where = walk.at(frame)
        if where is not None:
            present.append((where[1], walk.pid, walk, where[0]))
    placed = []
    for foot, pid, walk, x in sorted(present, key=lambda t: (t[0], t[1])):  # far (higher up) first
        step = int((frame - walk.start) / (POSE_SECONDS * fps)) + walk.pose_seed
        sprite = sprites[pid][step % WALK_POSES]
        left, top, img, alpha = _place(sprite, x, foot, person_height(foot, fh, people[pid].height))
        total = int((alpha > MASK_LEVEL).sum())
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + alpha.shape[1], fw), min(top + alpha.shape[0], fh)
        if total == 0 or x1 <= x0 or y1 <= y0:
            continue
        a = alpha[y0 - top:y1 - top, x0 - left:x1 - left, None]
        region = out[y0:y1, x0:x1]
        region *= 1 - a
        region += img[y0 - top:y1 - top, x0 - left:x1 - left] * a
        owner[y0:y1, x0:x1][a[..., 0] > MASK_LEVEL] = pid
        placed.append((pid, x0, y0, x1, y1, total))
    rows = []
    for pid, x0, y0, x1, y1, total in placed:
        seen = int((owner[y0:y1, x0:x1] == pid).sum())
        if seen:
            rows.append((pid, x0, y0, x1 - x0, y1 - y0, min(1.0, seen / total)))
    return out, sorted(rows)


def noise_bank(cam: CameraProfile, rng: np.random.Generator, height: int, width: int,
               difficulty: float) -> np.ndarray:
    """A few frames of luminance sensor noise (float32 ``[NOISE_FRAMES, H, W]``, with the rounding offset added).

    Drawing fresh Gaussian noise for every pixel of every frame costs more than everything else in a frame;
    a small bank, picked from and shifted at random per frame, looks the same to a background model.
    """
    sigma = np.float32((cam.noise + 0.01 * difficulty) * 255.0 * NOISE_FACTOR)
    return rng.standard_normal((NOISE_FRAMES, height, width), dtype=np.float32) * sigma + np.float32(0.5)


def finish(frame: np.ndarray, cam: CameraProfile, noise: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera effects on a composed frame: mild blur, gain / colour cast, sensor noise, gamma.

    Args:
        frame: float32 ``[H, W, C]`` in 0..1 from :func:`compose`.
        cam: The camera.
        noise: The camera's :func:`noise_bank`.
        rng: The clip's frame stream (which noise frame, shifted how far).

    Returns:
        uint8 ``[H, W, 3]`` RGB (infrared: three equal grey channels).
    """
    h, w, ch = frame.shape
    if cam.blur > 0.3:
        frame = cv2.GaussianBlur(frame, (0, 0), cam.blur).reshape(h, w, ch)
    plane = np.roll(noise[int(rng.integers(len(noise)))], int(rng.integers(h)), axis=0)
    gain = [float(g) * 255.0 for g in cam.gain] + [0.0] * (4 - ch)
    out = cv2.multiply(frame, tuple(gain)).reshape(h, w, ch)  # OpenCV: several times faster than numpy here
    out = cv2.add(out, cv2.merge([plane] * ch) if ch > 1 else plane).reshape(h, w, ch)
    out = np.clip(out, 0, 255, out=out).astype(np.uint8)
    lut = np.clip((np.arange(256) / 255.0) ** cam.gamma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(out, lut).reshape(h, w, ch)
    return out if ch == 3 else np.repeat(out, 3, axis=2)
