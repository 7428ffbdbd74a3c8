"""Per-camera nuisances of the synthetic generator: scene, framing, optics and illumination.

Real re-ID cameras differ in background, viewpoint, how large and where in the crop the person
appears (detector misalignment), blur, sensor noise and lighting. Each synthetic camera draws one
profile of these from ``(seed, camid)``; ``difficulty`` scales how far profiles and individual
images stray from a centred, sharp, evenly lit crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.data._identity import TAG_CAMERA


@dataclass(frozen=True)
class CameraProfile:
    """Fixed properties of one camera."""

    camid: int
    modality: str  # "rgb" or "ir"
    scale: float  # mean person scale in the crop
    dx: float  # mean horizontal offset, fraction of the width
    dy: float  # mean vertical offset, fraction of the height
    blur: float  # mean Gaussian blur sigma, fraction of the height / 100
    noise: float  # sensor noise sigma (0..1 intensity)
    gain: np.ndarray  # per-channel (RGB) or single (IR) gain
    gamma: float
    mirror_p: float  # probability that a person faces the other way (mirrored view)
    view_w: float  # mean body width factor (1 = frontal, smaller = oblique view)
    bg_seed: int


def make_camera(seed: int, camid: int, modality: str, difficulty: float) -> CameraProfile:
    """Draw the profile of camera ``camid``.

    Args:
        seed: Dataset seed.
        camid: Camera number (its own random stream).
        modality: ``"rgb"`` or ``"ir"``.
        difficulty: 0 = all cameras alike and clean, 1 = the calibrated default, >1 harder.

    Returns:
        The camera's profile.
    """
    rng = np.random.default_rng([seed, 0, camid, 0, TAG_CAMERA])
    d = float(difficulty)
    if modality == "rgb":
        gain = 1.0 + d * rng.uniform(-0.12, 0.12, size=3)  # white balance / colour cast
    else:
        gain = np.array([1.0 + d * rng.uniform(-0.25, 0.2)])
    return CameraProfile(
        camid=camid, modality=modality, scale=float(1.0 - d * rng.uniform(0.0, 0.15)),
        dx=float(d * rng.uniform(-0.06, 0.06)), dy=float(d * rng.uniform(-0.04, 0.04)),
        blur=float(d * rng.uniform(0.2, 0.9) * (1.6 if modality == "ir" else 1.0)),
        noise=float(d * rng.uniform(0.005, 0.03) * (1.5 if modality == "ir" else 1.0)),
        gain=gain.astype(np.float32), gamma=float(np.exp(d * rng.uniform(-0.2, 0.2))),
        mirror_p=float(rng.choice([0.15, 0.5, 0.85])), view_w=float(1.0 - d * rng.uniform(0.0, 0.15)),
        bg_seed=int(rng.integers(2**31)),
    )


def make_background(cam: CameraProfile, height: int, width: int, difficulty: float) -> np.ndarray:
    """A scene template larger than a crop (crops are cut from it at random offsets).

    Args:
        cam: The camera whose scene to draw.
        height: Crop height in pixels.
        width: Crop width in pixels.
        difficulty: Scales clutter contrast.

    Returns:
        float32 ``[2H, 3W, C]`` in 0..1, C = 3 for RGB cameras and 1 for IR.
    """
    rng = np.random.default_rng(cam.bg_seed)
    ch = 3 if cam.modality == "rgb" else 1
    th, tw = 2 * height, 3 * width

    def colour(lo: float, hi: float) -> np.ndarray:
        if ch == 1:
            return np.full(1, rng.uniform(lo, hi), np.float32)
        return (rng.uniform(lo, hi) * (0.6 + 0.4 * rng.random(3))).astype(np.float32)

    wall, floor = colour(0.25, 0.85), colour(0.15, 0.7)
    horizon = int(th * rng.uniform(0.45, 0.75))
    img = np.empty((th, tw, ch), np.float32)
    img[:horizon] = wall
    img[horizon:] = floor
    # Clutter: doors, windows, signs, parked things; contrast grows with difficulty.
    k = min(1.0, 0.3 + 0.7 * difficulty)
    for _ in range(int(rng.integers(4, 10))):
        x0, y0 = int(rng.integers(0, tw)), int(rng.integers(0, th))
        w, h = int(rng.integers(width // 6, width)), int(rng.integers(height // 10, height // 2))
        c = wall * (1 - k) + colour(0.05, 1.0) * k
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), c.tolist(), -1)
    # Floor gradient and fine texture so the background is not flat.
    ramp = np.linspace(0.85, 1.15, th, dtype=np.float32)[:, None, None]
    img = img * ramp + rng.normal(0, 0.03 * k, size=(th, tw, 1)).astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return np.clip(img.reshape(th, tw, ch), 0, 1)
