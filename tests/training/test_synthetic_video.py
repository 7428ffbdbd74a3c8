"""Synthetic camera video: layout and meta.json, determinism, ground truth, the infrared contract, the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from training.__main__ import main as training_main
from training.data._video_render import Sprite, compose
from training.data._video_scene import FLOOR, NEAR_HEIGHT, Pass, person_height, plan
from training.data.video import generate_video, people, render_camera
from xmreid.errors import UserError

SMALL = dict(ids=3, seconds=2.0, fps=25, width=320, height=240, show_progress=False)
FRAMES = 50


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_video(tmp_path_factory.mktemp("video") / "v", seed=3, **SMALL)


def _gt(root: Path, camid: int) -> np.ndarray:
    text = (root / f"cam{camid}" / "gt" / "gt.txt").read_text()
    return np.array([[float(v) for v in line.split(",")] for line in text.splitlines()]).reshape(-1, 9)


def _first_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


def test_meta_names_every_camera_clip_and_ground_truth(clips: Path) -> None:
    meta = json.loads((clips / "meta.json").read_text())
    assert {k: meta[k] for k in ("layout", "seed", "ids", "fps", "width", "height", "frames")} == \
        {"layout": "video", "seed": 3, "ids": 3, "fps": 25, "width": 320, "height": 240, "frames": FRAMES}
    assert sorted(meta["cameras"], key=int) == ["1", "2", "3", "4", "5", "6"]
    for cam, entry in meta["cameras"].items():
        assert entry["modality"] == ("ir" if cam in ("3", "6") else "rgb")
        assert entry["video"] == f"cam{cam}/cam{cam}.mp4" and entry["gt"] == f"cam{cam}/gt/gt.txt"
        assert (clips / entry["video"]).is_file() and (clips / entry["gt"]).is_file()


def test_mp4_is_readable_with_every_frame(clips: Path) -> None:
    for camid in (1, 3):
        cap = cv2.VideoCapture(str(clips / f"cam{camid}" / f"cam{camid}.mp4"))
        assert cap.isOpened()
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
        assert round(cap.get(cv2.CAP_PROP_FPS)) == 25
        shapes = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            shapes.append(frame.shape)
        cap.release()
        assert shapes == [(240, 320, 3)] * FRAMES


def test_ground_truth_rows_are_mot_boxes_inside_the_frame(clips: Path) -> None:
    for camid in range(1, 7):
        gt = _gt(clips, camid)
        assert len(gt) > 0, camid
        frame, pid, left, top, w, h, conf, cls, vis = gt.T
        assert frame.min() >= 1 and frame.max() <= FRAMES
        assert set(pid.astype(int)) <= {1, 2, 3}
        assert (left >= 0).all() and (top >= 0).all() and (w >= 1).all() and (h >= 1).all()
        assert (left + w <= 320).all() and (top + h <= 240).all()
        assert (conf == 1).all() and (cls == 1).all()
        assert (vis > 0).all() and (vis <= 1).all()
        assert len({(int(f), int(p)) for f, p in zip(frame, pid)}) == len(gt)  # one box per person and frame
        order = np.lexsort((pid, frame))
        assert (order == np.arange(len(gt))).all()  # sorted by frame, then id
    # People enter and leave: some boxes are cut by the frame edge, with part of the body unseen.
    edge = np.concatenate([_gt(clips, c) for c in range(1, 7)])
    cut = (edge[:, 2] == 0) | (edge[:, 2] + edge[:, 4] == 320)
    assert cut.any() and (edge[cut, 8] < 1).any()


def test_every_infrared_person_walks_past_an_rgb_camera(clips: Path) -> None:
    ir = {int(p) for c in (3, 6) for p in _gt(clips, c)[:, 1]}
    rgb = {int(p) for c in (1, 2, 4, 5) for p in _gt(clips, c)[:, 1]}
    assert ir and ir <= rgb
    meta = json.loads((clips / "meta.json").read_text())
    for pid in (1, 2, 3):  # each person: two or three RGB cameras and one or two IR cameras
        cams = [int(c) for c, e in meta["cameras"].items() if pid in e["people"]]
        assert 2 <= len([c for c in cams if c not in (3, 6)]) <= 3
        assert len([c for c in cams if c in (3, 6)]) >= 1


def test_same_seed_same_clips_other_seed_differs(clips: Path, tmp_path: Path) -> None:
    again = generate_video(tmp_path / "again", seed=3, **SMALL)
    other = generate_video(tmp_path / "other", seed=4, **SMALL)
    for camid in (1, 3):
        gt = f"cam{camid}/gt/gt.txt"
        video = Path(f"cam{camid}/cam{camid}.mp4")
        assert (again / gt).read_bytes() == (clips / gt).read_bytes()
        assert _first_frame(again / video).tobytes() == _first_frame(clips / video).tobytes()
        assert (other / gt).read_bytes() != (clips / gt).read_bytes()
    # Cameras rendered in worker processes: the same bytes.
    pooled = generate_video(tmp_path / "pooled", seed=3, workers=2, **SMALL)
    for camid in range(1, 7):
        gt = f"cam{camid}/gt/gt.txt"
        assert (pooled / gt).read_bytes() == (clips / gt).read_bytes()
    assert _first_frame(pooled / "cam6/cam6.mp4").tobytes() == _first_frame(clips / "cam6/cam6.mp4").tobytes()
    # Regenerating over an earlier clip set replaces it.
    generate_video(again, seed=3, **{**SMALL, "ids": 2})
    assert json.loads((again / "meta.json").read_text())["ids"] == 2


def _recoloured(person):
    """The same person in other RGB colours (garments, skin, hair, ...); thermal levels untouched."""
    def garment(g):
        return dataclasses.replace(g, rgb=tuple(np.float32(1) - c for c in g.rgb))

    return dataclasses.replace(person, upper_g=garment(person.upper_g), lower_g=garment(person.lower_g),
                               rgb={k: np.float32(1) - v for k, v in person.rgb.items()})


def test_infrared_frames_do_not_depend_on_rgb_colour() -> None:
    seed, frames, w, h = 5, 40, 320, 240
    persons = people(seed, 3)
    recoloured = {pid: _recoloured(p) for pid, p in persons.items()}
    passes = plan(seed, 3, frames, 25, w, h, {pid: p.height for pid, p in persons.items()})

    def clip(camid: int, who: dict) -> list[tuple[np.ndarray, list]]:
        return list(itertools.islice(render_camera(seed, camid, passes[camid], who, frames, 25, h, w, 1.0), frames))

    for camid in (3, 6):
        if not passes[camid]:
            continue
        a, b = clip(camid, persons), clip(camid, recoloured)
        assert any(rows for _, rows in a)  # people are on screen
        for (fa, ra), (fb, rb) in zip(a, b):
            assert ra == rb and np.array_equal(fa, fb)
            assert np.array_equal(fa[..., 0], fa[..., 1]) and np.array_equal(fa[..., 0], fa[..., 2])  # grey
    rgb = next(c for c in (1, 2, 4, 5) if passes[c])
    changed = [not np.array_equal(fa, fb) for (fa, _), (fb, _) in zip(clip(rgb, persons), clip(rgb, recoloured))]
    assert any(changed)  # the check can see colour: RGB cameras do change


def _block(height: int, width: int) -> list[Sprite]:
    """A solid ``height x width`` sprite standing on its bottom row, centred."""
    sprite = Sprite(img=np.ones((height, width, 1), np.float32), alpha=np.ones((height, width), np.float32),
                    centre=width / 2, foot=float(height), ph=float(height))
    return [sprite] * 4


def test_visibility_counts_occlusion_by_nearer_people_and_the_frame_edge() -> None:
    # Frame 100 x 100; sprites 20 x 10 px. Statures chosen so both are drawn 20 px tall at their foot rows.
    size = 100
    far_foot = 90.0
    near = SimpleNamespace(height=20 / (size * NEAR_HEIGHT))
    far = SimpleNamespace(height=20 / person_height(far_foot, size, 1.0))
    assert person_height(FLOOR[1] * size, size, near.height) == pytest.approx(20)

    def walk(pid: int, x: float, foot: float) -> Pass:
        return Pass(pid=pid, camid=1, start=0, frames=2, x=(x, x), foot=(foot, foot), pose_seed=0)

    background = np.zeros((size, size, 1), np.float32)
    sprites = {1: _block(20, 10), 2: _block(20, 10)}
    # Person 1 near (feet on the bottom row) at columns 45..54, rows 80..99; person 2 farther at columns
    # 50..59, rows 70..89: person 1 hides columns 50..54 of rows 80..89 of person 2, 50 of its 200 pixels.
    img, rows = compose(0, [walk(2, 55, far_foot), walk(1, 50, 100)], sprites, {1: near, 2: far}, background, 25)
    assert rows == [(1, 45, 80, 10, 20, 1.0), (2, 50, 70, 10, 20, 0.75)]
    assert img[80:100, 45:55].min() == 1 and img.sum() == 200 + 150
    # Half out of the frame on the left: columns -3..6 are drawn, the box is clipped to 0..6, 70 % is seen.
    _, rows = compose(1, [walk(1, 2, 100)], sprites, {1: near}, background, 25)
    assert rows == [(1, 0, 80, 7, 20, pytest.approx(0.7))]
    # Outside the pass: nothing.
    assert compose(2, [walk(1, 50, 100)], sprites, {1: near}, background, 25)[1] == []


def test_cli_and_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    rc = training_main(["synth", "--layout", "video", "--out", str(out), "--ids", "2", "--seed", "1",
                        "--seconds", "0.4", "--fps", "10", "--width", "160", "--height", "120", "--no-progress"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (4, 10, 160, 120)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(UserError, match="not empty"):
        generate_video(foreign, **SMALL)
    assert (foreign / "keep.txt").is_file()
    with pytest.raises(UserError, match="ids must be an integer >= 1"):
        generate_video(tmp_path / "x", **{**SMALL, "ids": 0})
    with pytest.raises(UserError, match="frames"):
        generate_video(tmp_path / "x", **{**SMALL, "seconds": 0.01})
    assert training_main(["synth", "--layout", "video", "--out", str(foreign), "--ids", "2", "--no-progress"]) == 1
    assert "not empty" in capsys.readouterr().err
