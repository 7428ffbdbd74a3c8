"""Per-identity appearance of a synthetic person: what stays the same in every camera.

Identity lives in *modality-invariant* cues only: garment patterns (kind, spatial frequency,
orientation), body proportions and accessories (hat, bag and its side). Colour is drawn for the
RGB cameras, and an independent "thermal signature" (one grey level per garment) for the infrared
cameras. The two are drawn from separate random streams, so the infrared brightness of a garment is
not a function of its RGB colour: a matcher cannot transfer colour or brightness across modalities.
"""

from __future__ import annotations

import colorsys
import functools
from dataclasses import dataclass

import numpy as np

PATTERNS: tuple[str, ...] = ("plain", "stripes", "checks", "dots")
BAGS: tuple[str, ...] = ("none", "left", "right", "backpack")
LOWERS: tuple[str, ...] = ("trousers", "shorts", "skirt")
# Stream tags keep the identity, camera, split and image random streams disjoint.
TAG_IDENTITY, TAG_IR, TAG_CAMERA, TAG_SPLIT, TAG_IMAGE = 11, 12, 13, 14, 15


@dataclass(frozen=True)
class Garment:
    """A patterned garment: geometry of the pattern plus its RGB colours and IR grey levels."""

    pattern: str
    freq: float  # cycles per person height, so the pattern scales with the person
    theta: float  # orientation in radians
    phase: tuple[float, float]
    rgb: tuple[np.ndarray, np.ndarray]  # base colour, pattern colour (float RGB in 0..1)
    ir: tuple[float, float]  # base level, pattern level (0..1)


@dataclass(frozen=True)
class Identity:
    """Everything about one person that does not depend on the camera."""

    pid: int
    height: float  # fraction of the frame a person at scale 1 fills
    head: float  # head radius / person height
    shoulder: float  # half shoulder width / person height
    hip: float  # half hip width / person height
    leg: float  # leg length / person height
    top_extra: float  # how far the upper garment reaches below the hip
    sleeve: float  # sleeve length as a fraction of the arm
    lower: str
    upper_g: Garment
    lower_g: Garment
    hat: bool
    bag: str
    bag_size: float
    long_hair: bool
    rgb: dict[str, np.ndarray]  # skin, hair, shoes, bag, hat
    ir: dict[str, float]


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A random garment colour, spread over hue, saturation and value."""
    h, s, v = rng.random(), rng.uniform(0.15, 0.95), rng.uniform(0.15, 0.95)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _contrasting(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A second colour far enough from ``base`` that the pattern is visible in RGB."""
    for _ in range(20):
        c = _colour(rng)
        if float(np.abs(c - base).sum()) > 0.6:
            return c
    return (1.0 - base).astype(np.float32)


def _levels(rng: np.random.Generator, patterned: bool) -> tuple[float, float]:
    """Thermal base / pattern grey levels; patterned garments keep a visible IR contrast."""
    base = float(rng.uniform(0.12, 0.9))
    if not patterned:
        return base, base
    while True:
        pat = float(rng.uniform(0.08, 0.95))
        if abs(pat - base) > 0.12:
            return base, pat


def _garment(rng: np.random.Generator, ir_rng: np.random.Generator, plain_p: float) -> Garment:
    pattern = "plain" if rng.random() < plain_p else str(rng.choice(PATTERNS[1:]))
    freq = {"plain": 1.0, "stripes": rng.uniform(5, 16), "checks": rng.uniform(4, 10),
            "dots": rng.uniform(5, 12)}[pattern]
    base = _colour(rng)
    return Garment(pattern=pattern, freq=float(freq), theta=float(rng.uniform(0, np.pi)),
                   phase=(float(rng.uniform(0, 2 * np.pi)), float(rng.uniform(0, 2 * np.pi))),
                   rgb=(base, _contrasting(rng, base)), ir=_levels(ir_rng, pattern != "plain"))


@functools.lru_cache(maxsize=4096)
def make_identity(seed: int, pid: int) -> Identity:
    """Draw the appearance of person ``pid``; a function of ``(seed, pid)`` only.

    Args:
        seed: Dataset seed.
        pid: Person id (any int; the same pid gives the same person whatever ``--ids`` is).

    Returns:
        The person's camera-independent description.
    """
    rng = np.random.default_rng([seed, pid, 0, 0, TAG_IDENTITY])
    # Independent stream for thermal levels: IR brightness must not be predictable from RGB colour.
    ir_rng = np.random.default_rng([seed, pid, 0, 0, TAG_IR])
    upper = _garment(rng, ir_rng, plain_p=0.25)
    lower = _garment(rng, ir_rng, plain_p=0.45)
    skin = np.array(colorsys.hsv_to_rgb(rng.uniform(0.03, 0.09), rng.uniform(0.25, 0.6),
                                        rng.uniform(0.35, 0.95)), dtype=np.float32)
    hair = np.array(colorsys.hsv_to_rgb(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.7),
                                        rng.uniform(0.05, 0.6)), dtype=np.float32)
    rgb = {"skin": skin, "hair": hair, "shoes": _colour(rng) * 0.5, "bag": _colour(rng), "hat": _colour(rng)}
    ir = {"skin": float(ir_rng.uniform(0.7, 0.98)), "hair": float(ir_rng.uniform(0.2, 0.6)),
          "shoes": float(ir_rng.uniform(0.1, 0.45)), "bag": float(ir_rng.uniform(0.05, 0.6)),
          "hat": float(ir_rng.uniform(0.1, 0.8))}
    return Identity(
        pid=pid, height=float(rng.uniform(0.84, 1.0)), head=float(rng.uniform(0.055, 0.072)),
        shoulder=float(rng.uniform(0.095, 0.15)), hip=float(rng.uniform(0.075, 0.12)),
        leg=float(rng.uniform(0.43, 0.52)), top_extra=float(rng.uniform(-0.02, 0.1)),
        sleeve=float(rng.choice([0.3, 0.55, 1.0])), lower=str(rng.choice(LOWERS, p=[0.6, 0.2, 0.2])),
        upper_g=upper, lower_g=lower, hat=bool(rng.random() < 0.3),
        bag=str(rng.choice(BAGS, p=[0.4, 0.2, 0.2, 0.2])), bag_size=float(rng.uniform(0.7, 1.3)),
        long_hair=bool(rng.random() < 0.35), rgb=rgb, ir=ir,
    )
