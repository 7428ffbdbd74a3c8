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


# ------------------------------------------------------------------ modality-bridging augmentations

#: ITU-R BT.601 luma weights (what ``cv2.cvtColor(..., COLOR_RGB2GRAY)`` uses).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def channel_augment(img: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Channel augmentation of a visible image (Ye et al., "Channel Augmented Joint Learning for
    Visible-Infrared Recognition", ICCV 2021, their ``ChannelAdapGray``).

    With probability ``p`` the image becomes grey: one of its R, G or B channels, or its luma,
    replicated to three channels. Infrared images are grey with brightness levels that are not a
    function of colour; a visible image rendered through a random channel has the same form and a
    random colour-to-grey mapping, so the network cannot lean on colour and must use the cues that
    survive in both modalities (pattern, shape).

    Args:
        img: uint8 ``[h, w, 3]`` RGB.
        rng: Random stream.
        p: Probability of applying it.

    Returns:
        uint8 ``[h, w, 3]``.
    """
    if p <= 0 or rng.random() >= p:
        return img
    k = int(rng.integers(0, 4))
    grey = img[:, :, k] if k < 3 else (img.astype(np.float32) @ _LUMA).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def random_erasing(img: np.ndarray, rng: np.random.Generator, p: float, area: tuple[float, float] = (0.02, 0.4),
                   aspect: tuple[float, float] = (0.3, 3.3)) -> np.ndarray:
    """Random erasing (Zhong et al., "Random Erasing Data Augmentation", AAAI 2020).

    With probability ``p`` a rectangle of random area (``area`` fraction of the image) and aspect
    ratio is filled with uniform noise, so no single region (a bag, a hat) can carry the identity.
    The sampling follows the paper: up to 100 tries to find a rectangle that fits.

    Args:
        img: uint8 ``[h, w, c]``.
        rng: Random stream.
        p: Probability of applying it.
        area: Range of the erased area as a fraction of the image.
        aspect: Range of the rectangle's height / width (sampled log-uniformly).

    Returns:
        uint8 image of the same shape (a copy when erased).
    """
    if p <= 0 or rng.random() >= p:
        return img
    h, w = img.shape[:2]
    for _ in range(100):
        target = rng.uniform(*area) * h * w
        ratio = float(np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1]))))
        eh, ew = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            out = img.copy()
            out[y:y + eh, x:x + ew] = rng.integers(0, 256, size=(eh, ew, img.shape[2]), dtype=np.uint8)
            return out
    return img


def grey_remap(img: np.ndarray, rng: np.random.Generator, p: float, knots: int = 4) -> np.ndarray:
    """Random grey-level remapping of a grey image (a training option; not in the paper).

    With probability ``p`` the image's grey levels go through a random piecewise-linear curve with
    ``knots`` control points at evenly spaced input levels and uniform random output levels, so the
    curve is in general not monotone: regions keep their boundaries and textures, but which region
    is the brighter one — and by how much — is redrawn for every image. That is the relation between
    a visible and an infrared image of the same clothes (thermal emission is not a function of
    colour), so a descriptor trained on remapped images cannot rely on grey levels and has to use
    shape and pattern geometry. It is the intensity counterpart of random gamma / inversion
    augmentation, drawn without a preferred direction.

    Args:
        img: uint8 ``[h, w, 3]`` grey image (three equal channels: infrared, or a channel-augmented
            visible image). Colour images are returned unchanged.
        rng: Random stream.
        p: Probability of applying it.
        knots: Control points of the curve (>= 2).

    Returns:
        uint8 ``[h, w, 3]``.
    """
    if p <= 0 or rng.random() >= p:
        return img
    if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])):
        return img
    xs = np.linspace(0, 255, knots)
    ys = rng.uniform(0, 255, size=knots)
    lut = np.interp(np.arange(256), xs, ys).round().clip(0, 255).astype(np.uint8)
    return lut[img]
