"""Draw one synthetic person image: silhouette label map -> garments -> camera nuisances.

The body is drawn as a label map with OpenCV primitives (head, torso, arms, legs, hat, bag), the
garments are filled with their pattern in body coordinates (so stripes move and scale with the
person), then the camera's scene, framing, blur, noise and lighting are applied.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from training.data._camera import CameraProfile
from training.data._identity import Garment, Identity

BG, SKIN, HAIR, UPPER, LOWER, SHOES, BAG, HAT = range(8)


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row / column coordinates (cached: the same for every image of a dataset)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return ys, xs


def _lookup(lab: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``palette[lab]`` as float32 ``[H, W, C]``; cv2.LUT is several times faster than fancy indexing."""
    table = np.zeros((1, 256, palette.shape[1]), np.float32)
    table[0, : len(palette)] = palette
    src = lab if palette.shape[1] == 1 else cv2.merge([lab] * palette.shape[1])
    return cv2.LUT(src, table).reshape(lab.shape[0], lab.shape[1], palette.shape[1])


def _pattern(g: Garment, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """Pattern weight in 0..1 at body coordinates (u, v) in person-height units.

    ``px`` is pixels per unit, used to keep edges about one pixel soft at any scale.
    """
    if g.pattern == "plain":
        return np.zeros_like(u)
    c, s = np.cos(g.theta), np.sin(g.theta)
    a = (u * c + v * s) * g.freq
    b = (-u * s + v * c) * g.freq
    sharp = max(1.0, px / g.freq / 3.0)  # period in pixels / 3: crisp but anti-aliased
    if g.pattern == "stripes":
        w = np.sin(2 * np.pi * a + g.phase[0])
    elif g.pattern == "checks":
        w = np.sin(2 * np.pi * a + g.phase[0]) * np.sin(2 * np.pi * b + g.phase[1]) * 2.0
    else:  # dots
        fa = (a + g.phase[0] / (2 * np.pi)) % 1.0 - 0.5
        fb = (b + g.phase[1] / (2 * np.pi)) % 1.0 - 0.5
        w = (0.28 - np.sqrt(fa * fa + fb * fb)) * 8.0
    return np.clip(0.5 + w * sharp, 0.0, 1.0)


def _labels(p: Identity, h: int, w: int, cx: float, y0: float, ph: float, pose: dict) -> np.ndarray:
    """Label map ``[h, w]`` uint8 of the person drawn with its top at ``y0`` and height ``ph`` pixels."""
    lab = np.zeros((h, w), np.uint8)
    vw = pose["view_w"]

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round(cx + x * ph)), int(round(y0 + y * ph))

    def poly(points: list[tuple[float, float]], label: int) -> None:
        cv2.fillConvexPoly(lab, np.array([pt(*q) for q in points], np.int32), label)

    def line(a: tuple[float, float], b: tuple[float, float], thick: float, label: int) -> None:
        cv2.line(lab, pt(*a), pt(*b), label, max(1, int(round(thick * ph))), cv2.LINE_8)

    hr = p.head
    y_sh = 2 * hr + 0.03
    y_hip = 1.0 - p.leg
    sw, hw = p.shoulder * vw, p.hip * vw
    y_top_end = min(y_hip + p.top_extra, y_hip + 0.12)
    if p.bag == "backpack":  # behind the body: pokes out on both sides of the torso
        bw = (sw + 0.025) * p.bag_size ** 0.3
        poly([(-bw, y_sh + 0.01), (bw, y_sh + 0.01), (bw, y_sh + 0.2 * p.bag_size), (-bw, y_sh + 0.2 * p.bag_size)], BAG)
    if p.long_hair:
        poly([(-hr * 1.1, hr), (hr * 1.1, hr), (hr * 1.2, y_sh + 0.08), (-hr * 1.2, y_sh + 0.08)], HAIR)
    # Legs: two quads from the hip to the ankles; stride moves the feet apart.
    st, leg_w = pose["stride"], hw * 0.95
    for side in (-1, 1):
        ankle = side * (leg_w * 0.45 + st)
        poly([(side * 0.005, y_hip - 0.01), (side * leg_w, y_hip - 0.01), (ankle + side * 0.03, 0.96),
              (ankle - side * 0.03, 0.96)], SKIN)
        knee = y_hip + 0.5 * p.leg
        end = {"trousers": 0.955, "shorts": knee - 0.03, "skirt": y_hip}[p.lower]
        if end > y_hip:
            t = (end - y_hip) / (0.96 - y_hip + 1e-6)
            xe_out = side * leg_w + t * (ankle + side * 0.03 - side * leg_w)
            xe_in = side * 0.005 + t * (ankle - side * 0.03 - side * 0.005)
            poly([(side * 0.005, y_hip - 0.01), (side * leg_w, y_hip - 0.01), (xe_out, end), (xe_in, end)], LOWER)
        cv2.ellipse(lab, pt(ankle + side * 0.012, 0.975), (max(1, int(0.04 * ph)), max(1, int(0.022 * ph))),
                    0, 0, 360, SHOES, -1)
    if p.lower == "skirt":
        poly([(-hw, y_hip - 0.01), (hw, y_hip - 0.01), (hw * 1.45, y_hip + 0.2), (-hw * 1.45, y_hip + 0.2)], LOWER)
    else:
        poly([(-hw, y_hip - 0.02), (hw, y_hip - 0.02), (hw, y_hip + 0.04), (-hw, y_hip + 0.04)], LOWER)
    # Torso (upper garment), slightly wider at the chest than at the hem.
    poly([(-sw, y_sh), (sw, y_sh), (hw * 1.05, y_top_end), (-hw * 1.05, y_top_end)], UPPER)
    # Arms: sleeve part in the upper garment's label, the rest skin.
    arm_len = 0.36
    for side, ang in ((-1, pose["arm_l"]), (1, pose["arm_r"])):
        sh = (side * (sw - 0.02), y_sh + 0.025)
        hand = (sh[0] + side * np.sin(ang) * arm_len, sh[1] + np.cos(ang) * arm_len)
        line(sh, hand, 0.045, SKIN)
        mid = (sh[0] + (hand[0] - sh[0]) * p.sleeve, sh[1] + (hand[1] - sh[1]) * p.sleeve)
        line(sh, mid, 0.05, UPPER)
    # Neck, head, hair cap, hat.
    line((0, hr * 2 - 0.01), (0, y_sh + 0.01), 0.035, SKIN)
    cv2.ellipse(lab, pt(0, hr), (max(1, int(hr * 0.85 * ph)), max(1, int(hr * ph))), 0, 0, 360, SKIN, -1)
    cv2.ellipse(lab, pt(0, hr), (max(1, int(hr * 0.9 * ph)), max(1, int(hr * 1.02 * ph))), 0, 180, 360, HAIR, -1)
    if p.hat:
        cv2.ellipse(lab, pt(0, hr * 0.8), (max(1, int(hr * 1.0 * ph)), max(1, int(hr * 0.9 * ph))), 0, 180, 360, HAT, -1)
        line((-hr * 1.3, hr * 0.8), (hr * 1.3, hr * 0.8), 0.012, HAT)
    if p.bag in ("left", "right"):  # shoulder bag hanging at the hip on one side, strap across the chest
        side = -1 if p.bag == "left" else 1
        bs = 0.07 * p.bag_size
        bx = side * (hw + 0.02 + bs / 2)
        poly([(bx - bs / 2, y_hip - 0.06), (bx + bs / 2, y_hip - 0.06), (bx + bs / 2, y_hip - 0.06 + bs * 1.1),
              (bx - bs / 2, y_hip - 0.06 + bs * 1.1)], BAG)
        line((-side * sw * 0.8, y_sh + 0.005), (bx, y_hip - 0.06), 0.012, BAG)
    return lab


def person_pose(cam: CameraProfile, pose_rng: np.random.Generator, difficulty: float) -> dict:
    """Body pose of one view: width factor (viewpoint), stride and arm angles, drawn around the camera's view."""
    d = float(difficulty)
    return {"view_w": float(np.clip(cam.view_w + d * pose_rng.uniform(-0.15, 0.08), 0.55, 1.05)),
            "stride": float(d * pose_rng.uniform(0.0, 0.1)),
            "arm_l": float(d * pose_rng.uniform(-0.1, 0.4)), "arm_r": float(d * pose_rng.uniform(-0.1, 0.4))}


def person_labels(p: Identity, height: int, width: int, cx: float, y0: float, ph: float, pose: dict) -> np.ndarray:
    """Label map ``[height, width]`` (0 = background) of ``p``, top centre at ``(cx, y0)``, ``ph`` pixels tall."""
    return _labels(p, height, width, cx, y0, ph, pose)


def paint_person(p: Identity, lab: np.ndarray, cx: float, y0: float, ph: float, rgb: bool) -> np.ndarray:
    """Fill a label map with the person's appearance: RGB colours, or the thermal grey levels for infrared.

    The one place where a modality decides what a garment looks like: the still images and the synthetic
    video both paint through it, so both keep the generator's contract (infrared never sees RGB colour).

    Args:
        p: The person.
        lab: Label map from :func:`person_labels`.
        cx: Column of the person's centre line.
        y0: Row of the top of the head.
        ph: Person height in pixels.
        rgb: True for an RGB camera, False for infrared.

    Returns:
        float32 ``[H, W, 3]`` (RGB) or ``[H, W, 1]`` (infrared) in 0..1; background pixels are 0.
    """
    height, width = lab.shape
    # Body coordinates for the garment patterns (person-height units, origin at the top centre).
    ys, xs = _grid(height, width)
    u, v = (xs - cx) / ph, (ys - y0) / ph
    ch = 3 if rgb else 1
    # Paint by palette lookup: base colour per label, pattern colour per label, pattern weight per pixel.
    base = np.zeros((8, ch), np.float32)
    pat = np.zeros((8, ch), np.float32)
    for label, name in ((SKIN, "skin"), (HAIR, "hair"), (SHOES, "shoes"), (BAG, "bag"), (HAT, "hat")):
        base[label] = pat[label] = p.rgb[name] if rgb else p.ir[name]
    weight = np.zeros((height, width), np.float32)
    for label, g in ((UPPER, p.upper_g), (LOWER, p.lower_g)):
        base[label], pat[label] = g.rgb if rgb else g.ir
        if g.pattern != "plain":
            m = lab == label
            weight[m] = _pattern(g, u[m], v[m], ph)
    img = _lookup(lab, base)
    if weight.any():
        img += _lookup(lab, pat - base) * weight[..., None]
    # Cylinder shading across the body gives the figure some volume (a function of the column only).
    col = (xs[0] - cx) / (ph * 0.2)
    img *= (0.78 + 0.22 * np.cos(np.clip(col, -1.5, 1.5)))[None, :, None]
    return img


def _occlude(img: np.ndarray, rng: np.random.Generator, rgb: bool) -> None:
    """Paint a foreground object over part of the person (bench, bin, a passer-by's shoulder), in place.

    Occlusion is a standard re-ID nuisance; it makes whole-image matching unreliable.
    """
    h, w = img.shape[:2]
    level = rng.uniform(0.05, 0.9, size=3 if rgb else 1).astype(np.float32)
    if rng.random() < 0.6:  # from the bottom
        top = int(h * rng.uniform(0.7, 0.88))
        img[top:] = level
    else:  # from one side
        edge = int(w * rng.uniform(0.12, 0.3))
        if rng.random() < 0.5:
            img[:, :edge] = level
        else:
            img[:, w - edge:] = level


def draw_person(p: Identity, cam: CameraProfile, background: np.ndarray, rng: np.random.Generator,
                pose_rng: np.random.Generator, height: int, width: int, difficulty: float) -> np.ndarray:
    """Render one crop of person ``p`` seen by camera ``cam``.

    Args:
        p: The person.
        cam: The camera (decides modality, framing and optics).
        background: The camera's scene template from ``make_background``.
        rng: This image's random stream (framing, optics, lighting).
        pose_rng: Stream for the body pose (shared by a RegDB visible/thermal pair).
        height: Output height.
        width: Output width.
        difficulty: Scales per-image jitter.

    Returns:
        uint8 ``[height, width, 3]`` RGB (infrared: three equal grey channels).
    """
    d = float(difficulty)
    pose = person_pose(cam, pose_rng, d)
    mirror = pose_rng.random() < cam.mirror_p
    scale = cam.scale * np.exp(d * rng.uniform(-0.15, 0.1))
    ph = height * 0.92 * p.height * scale
    cx = width * (0.5 + cam.dx + d * rng.uniform(-0.1, 0.1))
    y0 = (height - ph) * 0.5 + height * (cam.dy + d * rng.uniform(-0.05, 0.05))
    lab = _labels(p, height, width, cx, y0, ph, pose)
    rgb = cam.modality == "rgb"
    ch = 3 if rgb else 1
    img = paint_person(p, lab, cx, y0, ph, rgb)

    # Cut the crop out of the scene at a random place; blend the soft-edged silhouette over it.
    bh, bw = background.shape[:2]
    oy, ox = int(rng.integers(0, bh - height + 1)), int(rng.integers(0, bw - width + 1))
    bg = background[oy:oy + height, ox:ox + width] * np.float32(rng.uniform(0.9, 1.1))
    alpha = cv2.GaussianBlur((lab > 0).astype(np.float32), (3, 3), 0.6)[..., None]
    img = img * alpha + bg * (1 - alpha)
    if rng.random() < min(0.5, 0.2 * d):
        _occlude(img, rng, rgb)
    if mirror:
        img = img[:, ::-1]

    # Optics and lighting: blur, illumination gradient, gain / colour cast, gamma, noise.
    sigma = (cam.blur + d * rng.uniform(0, 0.5)) * height / 128.0
    if sigma > 0.3:
        img = cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), sigma).reshape(height, width, ch)
    light = 1.0 + d * rng.uniform(-0.2, 0.2) * np.linspace(-1, 1, height, dtype=np.float32)
    gain = cam.gain * np.float32(255.0 * np.exp(d * rng.uniform(-0.15, 0.15)))
    factor = light[:, None, None] * gain[None, None, :]
    # Sensor noise, shared by the colour channels (luminance noise) to keep generation fast.
    sigma_n = np.float32((cam.noise + 0.01 * d) * 255.0)
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * sigma_n + np.float32(0.5)
    out = np.clip(img * factor + noise, 0, 255).astype(np.uint8)
    # Gamma through a lookup table: same result as a float power, a fraction of the cost.
    gamma = cam.gamma * np.exp(d * rng.uniform(-0.1, 0.1))
    lut = np.clip((np.arange(256) / 255.0) ** gamma * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out = cv2.LUT(out, lut).reshape(height, width, ch)
    return out if rgb else np.repeat(out, 3, axis=2)
