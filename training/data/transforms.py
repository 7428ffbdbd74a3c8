"""Training-time image transforms on uint8 RGB arrays (no normalisation: that lives in the model).

Resize to the model's H x W, random horizontal flip and pad-and-crop (random translation), the
augmentation re-ID baselines use (e.g. torchreid's ``random_flip`` + ``random_crop``). The pad is 10
pixels at the paper's 384 x 128 input and scales with the input size.
"""

from __future__ import annotations

import cv2
import numpy as np


def default_pad(height: int, width: int) -> int:
    """10 px at 384 x 128, scaled by the smaller of the two size ratios (5 px at 192 x 64)."""
    return max(1, int(round(10 * min(height / 384, width / 128))))


class TrainTransform:
    """Resize, random horizontal flip, zero pad-and-random-crop.

    Args:
        height: Output height.
        width: Output width.
        flip_p: Probability of a horizontal flip.
        pad: Padding in pixels on each side before cropping back to H x W (None = ``default_pad``).
    """

    def __init__(self, height: int, width: int, flip_p: float = 0.5, pad: int | None = None) -> None:
        self.height, self.width, self.flip_p = int(height), int(width), float(flip_p)
        self.pad = default_pad(height, width) if pad is None else int(pad)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one image.

        Args:
            img: uint8 ``[h, w, 3]`` RGB.
            rng: Random stream (one per image, so results do not depend on worker scheduling).

        Returns:
            uint8 ``[height, width, 3]`` RGB.
        """
        if img.shape[:2] != (self.height, self.width):
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        if rng.random() < self.flip_p:
            img = img[:, ::-1]
        if self.pad > 0:
            p = self.pad
            padded = np.zeros((self.height + 2 * p, self.width + 2 * p, img.shape[2]), np.uint8)
            padded[p:p + self.height, p:p + self.width] = img
            y, x = int(rng.integers(0, 2 * p + 1)), int(rng.integers(0, 2 * p + 1))
            img = padded[y:y + self.height, x:x + self.width]
        return np.ascontiguousarray(img)
