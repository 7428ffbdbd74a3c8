"""Deterministic synthetic cross-modality person re-ID data in the SYSU-MM01 or RegDB layout.

The real datasets need a licence request, so the project ships this generator; it writes the same
folder layout and split files as the real data, so every code path the real data takes is taken by
the synthetic data too (ARCHITECTURE.md §5). Identity is recoverable across modalities only through
modality-invariant cues (garment pattern, body proportions, accessories): see ``_identity.py``.

Usage::

    python -m training synth --layout sysu --out data/synthetic_sysu --ids 200 --seed 0
    python -m training synth --layout video --out data/synthetic_video --ids 12 --seed 0   # clips + gt.txt
"""

from __future__ import annotations

import argparse
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

from training.data._camera import CameraProfile, make_background, make_camera
from training.data._identity import TAG_IMAGE, TAG_SPLIT, make_identity
from training.data._render import draw_person
from training.data.records import (MARKER, REGDB_THERMAL_CAM, REGDB_VISIBLE_CAM, layout_cameras,
                                   layout_image_path)
from xmreid.errors import UserError

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("sysu", "regdb")
JPEG_QUALITY = 90  # fixed so that the same seed gives the same bytes
REGDB_TRIALS = 10
_OWNED = ("cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp", "Visible", "Thermal", "idx", "tracks.csv")
# Per-process cache of camera profiles and scene templates: (seed, layout, h, w, difficulty) -> {cam: ...}.
_SCENES: dict[tuple, dict[int, tuple[CameraProfile, np.ndarray]]] = {}


def _scenes(seed: int, layout: str, height: int, width: int, difficulty: float) -> dict[int, tuple]:
    key = (seed, layout, height, width, difficulty)
    if key not in _SCENES:
        scenes = {}
        for camid, modality in layout_cameras(layout).items():
            cam = make_camera(seed, camid if layout == "sysu" else 10 + camid, modality, difficulty)
            scenes[camid] = (cam, make_background(cam, height, width, difficulty))
        _SCENES[key] = scenes
    return _SCENES[key]


def render_image(seed: int, layout: str, pid: int, camid: int, n: int, height: int, width: int,
                 difficulty: float) -> np.ndarray:
    """Render image ``n`` of person ``pid`` in camera ``camid``; a pure function of its arguments.

    Args:
        seed: Dataset seed.
        layout: ``"sysu"`` or ``"regdb"`` (decides the cameras).
        pid: Person id.
        camid: Camera number of the layout.
        n: Image index within (pid, camid), 0-based.
        height: Image height.
        width: Image width.
        difficulty: Nuisance scale (see ``generate``).

    Returns:
        uint8 ``[height, width, 3]`` RGB.
    """
    cam, background = _scenes(seed, layout, height, width, difficulty)[camid]
    # Per-image stream seeded from (seed, pid, cam, n): any image can be rebuilt alone, in any order.
    rng = np.random.default_rng([seed, pid, camid, n, TAG_IMAGE])
    # RegDB's visible and thermal images come from one dual-camera rig at the same moment, so a
    # visible/thermal pair shares the pose; SYSU-MM01 cameras see independent poses.
    pose_cam = camid if layout == "sysu" else 0
    pose_rng = np.random.default_rng([seed, pid, pose_cam, n, TAG_IMAGE + 1])
    return draw_person(make_identity(seed, pid), cam, background, rng, pose_rng, height, width, difficulty)


def _write_person(job: tuple) -> int:
    """Worker: render and write every image of one person. Returns the number written."""
    out, seed, layout, pid, per_cam, height, width, difficulty = job
    count = 0
    for camid in layout_cameras(layout):
        for n in range(per_cam):
            img = render_image(seed, layout, pid, camid, n, height, width, difficulty)
            path = Path(out) / layout_image_path(layout, pid, camid, n)
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise RuntimeError(f"OpenCV could not encode {path}")
            path.write_bytes(buf.tobytes())
            count += 1
    return count


TRACKS_FILE = "tracks.csv"  # serving.indexing.crawl.TRACKS_FILE reads it back


def track_id(pid: int, camid: int, n: int, track_length: int) -> int:
    """The track of image ``n`` (0-based) of ``pid`` in camera ``camid``: runs of ``track_length`` consecutive
    images of one person in one camera, numbered ``(pid * 10 + camid) * 1000 + n // track_length`` so that
    the number reads back as person, camera and pass (``31000``: person 3's first pass in camera 1)."""
    return (pid * 10 + camid) * 1000 + n // track_length


def write_tracks(out: str | Path, layout: str, people: int, images_per_camera: int, track_length: int) -> Path:
    """Write ``tracks.csv`` (``path,camera,person_label,track_id``) for a generated set, purely after the fact.

    The images and splits are never touched and no random stream is drawn: a track is just a run of
    consecutive image numbers, so writing this file cannot change a pixel or a split (a test checks the
    images are byte-identical with and without it). The file is also a valid ``--manifest`` for
    ``python -m serving index``.

    Returns:
        The path written.
    """
    if int(track_length) != track_length or track_length < 1:
        raise UserError(f"track_length must be an integer >= 1, got {track_length!r}")
    lines = ["path,camera,person_label,track_id"]
    for pid in range(1, people + 1):
        for camid in layout_cameras(layout):
            for n in range(images_per_camera):
                lines.append(f"{layout_image_path(layout, pid, camid, n)},{camid},{pid},"
                             f"{track_id(pid, camid, n, int(track_length))}")
    path = Path(out) / TRACKS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def default_test_ids(ids: int) -> int:
    """Test identities when not given: 20 %, roughly SYSU-MM01's 96 of 491 (and RegDB's half for RegDB)."""
    return max(1, math.ceil(0.2 * ids))


def _write_splits(out: Path, layout: str, ids: int, seed: int, per_cam: int, test_ids: int | None,
                  extra_train_ids: int = 0) -> None:
    pids = np.arange(1, ids + 1)
    extra = np.arange(ids + 1, ids + 1 + extra_train_ids)  # after the split of 1..ids: it stays as it was
    if layout == "sysu":
        # Roughly SYSU-MM01's 296 train / 99 val / 96 test of 491 identities.
        perm = np.random.default_rng([seed, 0, 0, 0, TAG_SPLIT]).permutation(pids)
        n_test = default_test_ids(ids) if test_ids is None else test_ids
        n_val = round(0.25 * (ids - n_test))
        parts = {"test_id": perm[:n_test], "val_id": perm[n_test:n_test + n_val],
                 "train_id": np.concatenate([perm[n_test + n_val:], extra])}
        (out / "exp").mkdir(parents=True, exist_ok=True)
        for name, part in parts.items():  # one line of comma-separated ints, like the real files
            (out / "exp" / f"{name}.txt").write_text(",".join(str(int(p)) for p in sorted(part)) + "\n")
        return
    (out / "idx").mkdir(parents=True, exist_ok=True)
    n_test = ids - ids // 2 if test_ids is None else test_ids
    for trial in range(1, REGDB_TRIALS + 1):  # 10 random identity splits (50/50 by default), as the RegDB protocol
        perm = np.random.default_rng([seed, 0, trial, 0, TAG_SPLIT]).permutation(pids)
        half = {"train": sorted([*perm[: ids - n_test], *extra]), "test": sorted(perm[ids - n_test:])}
        for split, members in half.items():
            for camid, mod in ((REGDB_VISIBLE_CAM, "visible"), (REGDB_THERMAL_CAM, "thermal")):
                lines = [f"{layout_image_path('regdb', int(p), camid, n)} {int(p)}" for p in members for n in range(per_cam)]
                (out / "idx" / f"{split}_{mod}_{trial}.txt").write_text("\n".join(lines) + "\n")


def _prepare(out: Path) -> None:
    """Refuse to write over a folder we did not make; clear a previous synthetic set."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(f"--out {out} is not empty and was not made by the generator (no {MARKER}); "
                            "choose an empty or new folder")
        for name in _OWNED:  # stale images from a larger earlier run would leak into the loaders
            shutil.rmtree(out / name, ignore_errors=True)
            if (out / name).is_file():
                (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)


def generate(out_dir: str | Path, layout: str = "sysu", ids: int = 200, seed: int = 0,
             images_per_camera: int = 10, height: int = 192, width: int = 64, difficulty: float = 1.0,
             show_progress: bool = True, workers: int = 2, test_ids: int | None = None,
             extra_train_ids: int = 0, track_length: int | None = None) -> Path:
    """Write a synthetic dataset.

    Args:
        out_dir: Dataset root to create (empty, new, or an earlier synthetic set, which is replaced).
        layout: ``"sysu"`` (cam1..cam6, exp/*_id.txt) or ``"regdb"`` (Visible/, Thermal/, idx/).
        ids: Number of identities, numbered 1..ids.
        seed: Everything (people, cameras, splits, every pixel) is a function of the seed.
        images_per_camera: Images per identity per camera.
        height: Image height (default 192, the paper's 384x128 aspect at half size).
        width: Image width.
        difficulty: Scales camera nuisances (offsets, scale, blur, noise, lighting, pose); 0 = clean.
        show_progress: Show a tqdm bar.
        workers: Processes to render with (1 = in this process).
        test_ids: Identities in the test split (default: 20 % for SYSU, half for RegDB). People are
            the same whatever the split: ``--ids 400 --test-ids 24`` has as many test people as
            ``--ids 120`` and four times the training people.
        extra_train_ids: People ``ids + 1 .. ids + extra_train_ids``, added to the training split after
            the split of ``1 .. ids`` is drawn, so the test people are exactly those of ``--ids`` alone:
            ``--ids 120 --extra-train-ids 280`` trains on 376 people and tests on the demo's 24.
        track_length: also write ``tracks.csv``, grouping each run of this many consecutive images of one
            person in one camera into a track (:func:`write_tracks`); None writes no track file.

    Returns:
        The dataset root.
    """
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    checks = {"ids": (ids, 2), "images_per_camera": (images_per_camera, 1), "height": (height, 32),
              "width": (width, 16), "workers": (workers, 1)}
    for name, (value, lo) in checks.items():
        if int(value) != value or value < lo:
            raise UserError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not 0 <= difficulty <= 3:
        raise UserError(f"difficulty must be in [0, 3], got {difficulty}")
    if int(extra_train_ids) != extra_train_ids or extra_train_ids < 0:
        raise UserError(f"extra_train_ids must be an integer >= 0, got {extra_train_ids!r}")
    if track_length is not None and (int(track_length) != track_length or track_length < 1):
        raise UserError(f"track_length must be an integer >= 1, got {track_length!r}")
    if test_ids is not None and (int(test_ids) != test_ids or not 1 <= test_ids < ids):
        raise UserError(f"test_ids must be an integer in [1, ids - 1] = [1, {ids - 1}], got {test_ids!r}")
    out = Path(out_dir)
    _prepare(out)
    people = ids + extra_train_ids
    jobs = [(str(out), seed, layout, pid, images_per_camera, height, width, float(difficulty))
            for pid in range(1, people + 1)]
    total = people * len(layout_cameras(layout)) * images_per_camera
    bar = tqdm(total=total, desc=f"synth {layout}", unit="img", disable=not show_progress)
    if workers == 1 or total < 400:  # a pool costs more than it saves for toy sets
        for job in jobs:
            bar.update(_write_person(job))
    else:
        methods = multiprocessing.get_all_start_methods()
        # Never fork: the caller may have torch / OpenCV threads running (forking those can deadlock).
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            for written in pool.map(_write_person, jobs, chunksize=4):
                bar.update(written)
    bar.close()
    _write_splits(out, layout, ids, seed, images_per_camera, test_ids, extra_train_ids)
    params = {"layout": layout, "ids": ids, "test_ids": test_ids, "extra_train_ids": extra_train_ids, "seed": seed,
              "images_per_camera": images_per_camera,
              "height": height, "width": width, "difficulty": difficulty, "jpeg_quality": JPEG_QUALITY}
    if track_length is not None:
        write_tracks(out, layout, people, images_per_camera, track_length)
        params["track_length"] = track_length  # only when given: without it, the marker is as it always was
    (out / MARKER).write_text(json.dumps(params, indent=2) + "\n")
    log.info("wrote %d images of %d identities (%s layout) to %s", total, people, layout, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m training synth``: write a synthetic dataset (and optionally a contact sheet)."""
    parser = argparse.ArgumentParser(prog="python -m training synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=(*LAYOUTS, "video"), default="sysu",
                        help="folder layout to write (video: one clip and gt.txt per SYSU camera)")
    parser.add_argument("--out", required=True, type=Path, help="dataset root to create")
    parser.add_argument("--ids", required=True, type=int, help="number of identities")
    parser.add_argument("--test-ids", type=int, default=None,
                        help="identities in the test split (default: 20%% for sysu, half for regdb)")
    parser.add_argument("--extra-train-ids", type=int, default=0,
                        help="more training people after the split of --ids is drawn (same test people)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--images-per-camera", type=int, default=10, help="images per identity per camera")
    parser.add_argument("--height", type=int, default=None, help="image height in pixels (default 192; video 480)")
    parser.add_argument("--width", type=int, default=None, help="image width in pixels (default 64; video 640)")
    parser.add_argument("--seconds", type=float, default=30.0, help="video: clip length")
    parser.add_argument("--fps", type=float, default=25.0, help="video: frame rate")
    parser.add_argument("--difficulty", type=float, default=1.0, help="nuisance scale, 0 (clean) .. 3")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--track-length", type=int, default=None,
                        help="also write tracks.csv: runs of this many consecutive images of one person in one "
                             "camera form a track (for group_by=camera_track); images are unchanged")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--contact-sheet", type=Path, default=None, help="also write a PNG overview here")
    args = parser.parse_args(argv)
    video = args.layout == "video"
    args.height = args.height if args.height is not None else (480 if video else 192)
    args.width = args.width if args.width is not None else (640 if video else 64)
    if video:
        from training.data.video import generate_video

        generate_video(args.out, ids=args.ids, seed=args.seed, seconds=args.seconds, fps=args.fps,
                       width=args.width, height=args.height, difficulty=args.difficulty,
                       show_progress=not args.no_progress, workers=args.workers)
        return 0
    root = generate(args.out, layout=args.layout, ids=args.ids, seed=args.seed,
                    images_per_camera=args.images_per_camera, height=args.height, width=args.width,
                    difficulty=args.difficulty, show_progress=not args.no_progress, workers=args.workers,
                    test_ids=args.test_ids, extra_train_ids=args.extra_train_ids, track_length=args.track_length)
    if args.contact_sheet is not None:
        from training.data._contact_sheet import contact_sheet

        contact_sheet(root, args.layout, args.contact_sheet)
    return 0
