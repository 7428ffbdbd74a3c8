"""The synthetic generator: SYSU-MM01 / RegDB layouts, split files, determinism, identity cues."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.__main__ import main as training_main
from training.data._identity import make_identity
from training.data.synthetic import generate, main, render_image
from xmreid.errors import UserError

ID_LINE = re.compile(r"^\d+(,\d+)*\n?$")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sysu_tree_matches_layout(sysu_root: Path) -> None:
    # conftest: 12 identities x 6 cameras x 4 images at the default 192 x 64.
    for cam in range(1, 7):
        pids = sorted(p.name for p in (sysu_root / f"cam{cam}").iterdir())
        assert pids == [f"{i:04d}" for i in range(1, 13)]
        for pid in pids:
            names = sorted(p.name for p in (sysu_root / f"cam{cam}" / pid).iterdir())
            assert names == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg"]
    for cam, is_ir in ((1, False), (2, False), (3, True), (4, False), (5, False), (6, True)):
        img = cv2.imread(str(sysu_root / f"cam{cam}" / "0001" / "0001.jpg")).astype(int)
        assert img.shape == (192, 64, 3)
        spread = np.abs(img - img.mean(axis=2, keepdims=True)).max()
        # Infrared is a 3-channel grey JPEG (channels equal up to JPEG rounding); RGB has colour.
        assert (spread <= 3) if is_ir else (spread > 30), (cam, spread)


def test_sysu_id_files_format_and_split(sysu_root: Path) -> None:
    ids = {}
    for name in ("train_id", "val_id", "test_id"):
        text = (sysu_root / "exp" / f"{name}.txt").read_text()
        assert ID_LINE.match(text), text  # one line of comma-separated integers, as in SYSU-MM01
        ids[name] = [int(t) for t in text.strip().split(",")]
        assert ids[name] == sorted(ids[name])
    all_ids = ids["train_id"] + ids["val_id"] + ids["test_id"]
    assert sorted(all_ids) == list(range(1, 13))  # disjoint and complete
    assert len(ids["test_id"]) == math.ceil(0.2 * 12)
    assert len(ids["val_id"]) == round(0.25 * (12 - len(ids["test_id"])))


def test_regdb_layout_and_split_files(regdb_root: Path) -> None:
    # conftest: 10 identities, 4 visible + 4 thermal images each.
    for folder in ("Visible", "Thermal"):
        assert sorted(int(p.name) for p in (regdb_root / folder).iterdir()) == list(range(1, 11))
        assert all(len(list(p.iterdir())) == 4 for p in (regdb_root / folder).iterdir())
    splits = set()
    for trial in range(1, 11):
        ids = {}
        for split in ("train", "test"):
            for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = (regdb_root / "idx" / f"{split}_{mod}_{trial}.txt").read_text().splitlines()
                assert len(lines) == 5 * 4
                pids = []
                for line in lines:
                    rel, label = line.split(" ")
                    assert (regdb_root / rel).is_file()
                    assert rel.split("/")[0] == folder and int(rel.split("/")[1]) == int(label)
                    pids.append(int(label))
                ids[split, mod] = sorted(set(pids))
        assert ids["train", "visible"] == ids["train", "thermal"]
        assert ids["test", "visible"] == ids["test", "thermal"]
        assert sorted(ids["train", "visible"] + ids["test", "visible"]) == list(range(1, 11))
        splits.add(tuple(ids["train", "visible"]))
    assert len(splits) > 1  # ten random splits, not one split ten times


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    kw = dict(layout="sysu", ids=3, images_per_camera=2, height=64, width=32, show_progress=False)
    a = _files(generate(tmp_path / "a", seed=5, **kw))
    b = _files(generate(tmp_path / "b", seed=5, **kw))
    c = _files(generate(tmp_path / "c", seed=6, **kw))
    assert a.keys() == b.keys() == c.keys()
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 3 * 6 * 2
    assert sum(a[k] != c[k] for k in images) == len(images)


def test_process_pool_gives_the_same_bytes(tmp_path: Path) -> None:
    # 480 images: above the in-process threshold, so workers=2 really uses the pool.
    kw = dict(layout="regdb", ids=12, seed=1, images_per_camera=20, height=32, width=16, show_progress=False)
    assert _files(generate(tmp_path / "one", workers=1, **kw)) == _files(generate(tmp_path / "two", workers=2, **kw))


def test_render_is_a_pure_function_of_its_arguments() -> None:
    first = render_image(3, "sysu", 7, 3, 2, 64, 32, 1.0)
    render_image(3, "sysu", 8, 1, 0, 64, 32, 1.0)  # other images in between change nothing
    assert np.array_equal(first, render_image(3, "sysu", 7, 3, 2, 64, 32, 1.0))
    assert not np.array_equal(first, render_image(3, "sysu", 7, 3, 3, 64, 32, 1.0))


def test_infrared_brightness_is_not_a_function_of_rgb_colour() -> None:
    # The design requirement: garment IR level must not be predictable from its RGB colour.
    people = [make_identity(0, pid) for pid in range(1, 401)]
    luma = np.array([g.rgb[0] @ np.array([0.299, 0.587, 0.114]) for p in people for g in (p.upper_g, p.lower_g)])
    ir = np.array([g.ir[0] for p in people for g in (p.upper_g, p.lower_g)])
    assert abs(np.corrcoef(luma, ir)[0, 1]) < 0.15
    # ...while identity does not depend on how many ids were generated.
    assert make_identity(0, 5) == make_identity(0, 5) and make_identity(0, 5) != make_identity(1, 5)


def test_difficulty_zero_is_cleaner_than_default() -> None:
    # Same person, two cameras: with no nuisances the images differ less than at difficulty 1.
    def gap(d: float) -> float:
        a = render_image(0, "sysu", 4, 1, 0, 96, 32, d).astype(float)
        b = render_image(0, "sysu", 4, 4, 0, 96, 32, d).astype(float)
        return float(np.abs(a - b).mean())

    assert gap(0.0) < gap(1.0)


def test_cli_writes_tree_and_contact_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    rc = main(["--layout", "sysu", "--out", str(tmp_path / "d"), "--ids", "3", "--seed", "0",
               "--images-per-camera", "2", "--height", "64", "--width", "32", "--no-progress",
               "--contact-sheet", str(sheet)])
    assert rc == 0
    assert (tmp_path / "d" / "exp" / "test_id.txt").is_file()
    png = cv2.imread(str(sheet))
    assert png is not None and png.shape[0] > 3 * 64 and png.shape[1] > 6 * 2 * 32


def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not ours")
    with pytest.raises(UserError, match="not empty"):
        generate(foreign, ids=3, show_progress=False)
    assert (foreign / "keep.txt").is_file()
    with pytest.raises(UserError, match="ids must be an integer >= 2"):
        generate(tmp_path / "x", ids=1, show_progress=False)
    with pytest.raises(UserError, match="layout must be one of"):
        generate(tmp_path / "x", layout="market", ids=3, show_progress=False)
    # Through the dispatcher a user mistake is a message and exit code 1, not a traceback.
    assert training_main(["synth", "--out", str(foreign), "--ids", "3", "--no-progress"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_regenerating_replaces_a_previous_synthetic_set(tmp_path: Path) -> None:
    kw = dict(layout="sysu", seed=0, height=32, width=16, show_progress=False)
    generate(tmp_path / "d", ids=6, images_per_camera=3, **kw)
    generate(tmp_path / "d", ids=3, images_per_camera=1, **kw)
    assert len(list((tmp_path / "d").rglob("*.jpg"))) == 3 * 6 * 1  # no stale images left behind


def test_extra_train_ids_keep_the_test_people(tmp_path):
    from training.data import build_dataset
    from training.data.synthetic import generate

    base = generate(tmp_path / "base", ids=10, images_per_camera=1, show_progress=False, workers=1)
    more = generate(tmp_path / "more", ids=10, extra_train_ids=5, images_per_camera=1, show_progress=False,
                    workers=1)
    assert (base / "exp" / "test_id.txt").read_text() == (more / "exp" / "test_id.txt").read_text()
    a, b = build_dataset("sysu", base), build_dataset("sysu", more)
    assert {r.pid for r in b.train} == {r.pid for r in a.train} | set(range(11, 16))
    assert (base / "cam3" / "0004" / "0001.jpg").read_bytes() == (more / "cam3" / "0004" / "0001.jpg").read_bytes()
    assert json.loads((more / "synthetic.json").read_text())["extra_train_ids"] == 5


def test_track_ids_are_written_after_the_fact_and_change_no_image_or_split(tmp_path: Path) -> None:
    from training.data.synthetic import TRACKS_FILE, track_id

    kw = dict(layout="sysu", ids=4, seed=2, images_per_camera=5, height=64, width=32, show_progress=False)
    plain = _files(generate(tmp_path / "plain", **kw))
    tracked = _files(generate(tmp_path / "tracked", track_length=2, **kw))
    assert set(tracked) - set(plain) == {TRACKS_FILE}
    for name in plain:  # every image and split file byte-identical; the marker only records the option
        if name != "synthetic.json":
            assert tracked[name] == plain[name], name
    assert json.loads(tracked["synthetic.json"]) == {**json.loads(plain["synthetic.json"]), "track_length": 2}
    assert TRACKS_FILE not in plain and "track_length" not in json.loads(plain["synthetic.json"])

    rows = [line.split(",") for line in tracked[TRACKS_FILE].decode().splitlines()]
    assert rows[0] == ["path", "camera", "person_label", "track_id"]
    assert len(rows) - 1 == 4 * 6 * 5 and all((tmp_path / "tracked" / r[0]).is_file() for r in rows[1:])
    by_path = {r[0]: int(r[3]) for r in rows[1:]}
    # Consecutive images of one person in one camera: 0001-0002, 0003-0004, then 0005 alone.
    assert by_path["cam3/0002/0001.jpg"] == by_path["cam3/0002/0002.jpg"] == track_id(2, 3, 0, 2) == 23000
    assert by_path["cam3/0002/0003.jpg"] == 23001 != by_path["cam6/0002/0003.jpg"]
    assert by_path["cam3/0002/0005.jpg"] == 23002
    assert len(set(by_path.values())) == 4 * 6 * 3
    # Regenerating without the option removes a stale track file.
    generate(tmp_path / "tracked", **kw)
    assert not (tmp_path / "tracked" / TRACKS_FILE).exists()
    with pytest.raises(UserError, match="track_length must be an integer >= 1"):
        generate(tmp_path / "bad", track_length=0, **kw)
