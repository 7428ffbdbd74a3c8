"""Synthetic camera video with ground truth: one clip per camera of the SYSU-MM01 layout.

People of the still-image generator (the same identities, cameras and painter) walk across each camera's
static scene, entering and leaving the frame, crossing and occluding each other at varying scale. RGB
cameras 1, 2, 4, 5 and infrared cameras 3, 6 share the people: each person walks past several RGB cameras
and at least one infrared camera, with the same global person id in every ground-truth file. Everything is a
function of the seed.

Layout written under ``--out``::

    meta.json           layout, seed, ids, fps, width, height, frames, and per camera its modality, video and gt
    camC/camC.mp4       the clip (MPEG-4 Part 2, ``mp4v``, through OpenCV)
    camC/gt/gt.txt      MOTChallenge ground truth: frame (1-based), person id, left, top, width, height, 1, 1,
                        visibility; 0-based pixel boxes of the whole body, clipped to the frame; visibility is
                        the visible fraction of the body after occlusion and frame cropping (rows only where
                        some of the person is seen)

Usage::

    python -m training synth --layout video --out data/synthetic_video --ids 12 --seed 0 --seconds 30
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.data._camera import make_background, make_camera
from training.data._identity import Identity, make_identity
from training.data._video_render import compose, finish, noise_bank, pass_sprites
from training.data._video_scene import Pass, plan
from training.data.records import sysu_modality
from xmreid.errors import UserError

log = logging.getLogger(__name__)

META = "meta.json"
FOURCC = "mp4v"
TAG_VIDEO_FRAME = 22  # random-stream tag of the per-frame sensor noise
CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


def camera_paths(camid: int) -> dict[str, str]:
    """The clip and ground-truth paths of camera ``camid``, relative to the clip-set root."""
    return {"video": f"cam{camid}/cam{camid}.mp4", "gt": f"cam{camid}/gt/gt.txt"}


def people(seed: int, ids: int) -> dict[int, Identity]:
    """The clip set's people: persons 1..ids of the still-image generator with the same seed."""
    return {pid: make_identity(seed, pid) for pid in range(1, ids + 1)}


def scene(seed: int, camid: int, height: int, width: int, difficulty: float) -> tuple:
    """Camera ``camid``'s profile and its static scene at frame size (float32 ``[H, W, C]`` in 0..1)."""
    cam = make_camera(seed, camid, sysu_modality(camid), difficulty)
    # The scene template is 2h x 3w of the size it is asked for: ask for a third of the width, half the height.
    template = make_background(cam, math.ceil(height / 2), math.ceil(width / 3), difficulty)
    return cam, np.ascontiguousarray(template[:height, :width])


def render_camera(seed: int, camid: int, walks: list[Pass], persons: dict[int, Identity], frames: int, fps: float,
                  height: int, width: int, difficulty: float):
    """Yield ``(frame uint8 [H, W, 3] RGB, ground-truth rows)`` for every frame of camera ``camid``'s clip.

    Args:
        seed: Clip-set seed (scene and noise).
        camid: Camera number.
        walks: The camera's passes (``_video_scene.plan``).
        persons: Person id -> identity (tests swap garment colours here to check the infrared contract).
        frames: Number of frames.
        fps: Frame rate.
        height: Frame height.
        width: Frame width.
        difficulty: Nuisance scale of the still-image generator (camera profile, pose, noise).
    """
    cam, background = scene(seed, camid, height, width, difficulty)
    sprites = {w.pid: pass_sprites(persons[w.pid], cam, w, height, difficulty) for w in walks}
    rng = np.random.default_rng([seed, 0, camid, 0, TAG_VIDEO_FRAME])
    noise = noise_bank(cam, rng, height, width, difficulty)
    for t in range(frames):
        img, rows = compose(t, walks, sprites, persons, background, fps)
        yield finish(img, cam, noise, rng), rows


def _prepare(out: Path) -> None:
    """Refuse to write over a folder the generator did not make; clear an earlier clip set."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        try:
            earlier = json.loads((out / META).read_text()).get("layout")
        except (OSError, ValueError, AttributeError):
            earlier = None
        if earlier != "video":
            raise UserError(f"--out {out} is not empty and holds no synthetic video set ({META}); "
                            "choose an empty or new folder")
        for camid in CAMERAS:
            shutil.rmtree(out / f"cam{camid}", ignore_errors=True)
        (out / META).unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check(ids: int, seconds: float, fps: float, width: int, height: int, difficulty: float) -> int:
    """Validate the arguments; returns the frame count."""
    for name, value, lo in (("ids", ids, 1), ("width", width, 64), ("height", height, 64)):
        if int(value) != value or value < lo:
            raise UserError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not 1 <= fps <= 120:
        raise UserError(f"fps must be in [1, 120], got {fps}")
    if not 0 <= difficulty <= 3:
        raise UserError(f"difficulty must be in [0, 3], got {difficulty}")
    frames = round(seconds * fps)
    if not 2 <= frames <= 200_000:
        raise UserError(f"seconds x fps must give 2 .. 200000 frames, got {seconds} s x {fps} fps")
    return frames


def _write_camera(job: tuple) -> int:
    """Worker: render camera ``camid``'s clip and write its MP4 and ``gt.txt``. Returns the frames written."""
    out, seed, ids, camid, walks, frames, fps, height, width, difficulty = job
    paths = camera_paths(camid)
    (out / paths["gt"]).parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out / paths["video"]), cv2.VideoWriter_fourcc(*FOURCC), float(fps), (width, height))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write {FOURCC} video to {out / paths['video']}")
    lines = []
    try:
        for t, (img, rows) in enumerate(render_camera(seed, camid, walks, people(seed, ids), frames, fps, height,
                                                      width, difficulty)):
            writer.write(np.ascontiguousarray(img[:, :, ::-1]))
            lines += [f"{t + 1},{pid},{x},{y},{w},{h},1,1,{vis:.4f}" for pid, x, y, w, h, vis in rows]
    finally:
        writer.release()
    (out / paths["gt"]).write_text("\n".join(lines) + ("\n" if lines else ""))
    return frames


def generate_video(out_dir: str | Path, ids: int = 12, seed: int = 0, seconds: float = 30.0, fps: float = 25.0,
                   width: int = 640, height: int = 480, difficulty: float = 1.0, show_progress: bool = True,
                   workers: int = 1) -> Path:
    """Write a synthetic clip set: one MP4 and one MOTChallenge ``gt.txt`` per camera, and ``meta.json``.

    Args:
        out_dir: Root to create (empty, new, or an earlier synthetic video set, which is replaced).
        ids: People 1..ids (the still-image generator's persons of the same seed).
        seed: Everything (people, cameras, paths, noise) is a function of the seed.
        seconds: Clip length.
        fps: Frame rate.
        width: Frame width.
        height: Frame height.
        difficulty: Nuisance scale of the cameras and poses, as for the still images.
        show_progress: Show a tqdm bar (one step per camera).
        workers: Processes rendering cameras side by side (1 = in this process); the bytes are the same.

    Returns:
        The clip-set root.
    """
    frames = _check(ids, seconds, fps, width, height, difficulty)
    if int(workers) != workers or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path(out_dir)
    _prepare(out)
    statures = {pid: p.height for pid, p in people(seed, ids).items()}
    passes = plan(seed, ids, frames, fps, width, height, statures)
    jobs = [(out, seed, ids, c, passes[c], frames, fps, height, width, difficulty) for c in CAMERAS]
    bar = tqdm(total=len(CAMERAS), desc="synth video", unit="camera", disable=not show_progress)
    if workers == 1:
        for job in jobs:
            _write_camera(job)
            bar.update()
    else:
        methods = multiprocessing.get_all_start_methods()
        # Never fork: the caller may have OpenCV threads running (forking those can deadlock).
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
            for _ in pool.map(_write_camera, jobs):
                bar.update()
    bar.close()
    cameras = {str(c): {"modality": sysu_modality(c), **camera_paths(c), "people": sorted(w.pid for w in passes[c])}
               for c in CAMERAS}
    meta = {"layout": "video", "seed": seed, "ids": ids, "fps": int(fps) if float(fps).is_integer() else fps,
            "width": width, "height": height,
            "frames": frames, "seconds": frames / fps, "difficulty": difficulty,
            "identities": {"generator": "synthetic sysu", "seed": seed, "pids": list(range(1, ids + 1)),
                           "note": "person p is the still-image generator's person p of the same seed"},
            "cameras": cameras}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("wrote %d clips of %d frames with %d people to %s", len(CAMERAS), frames, ids, out)
    return out
