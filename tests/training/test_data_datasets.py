"""Dataset parsers (SYSU-MM01, RegDB), ``build_dataset`` and ``read_image``."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from training.data import build_dataset
from training.data.images import read_image
from training.data.records import Record
from xmreid.errors import UserError


def _ids(root: Path, name: str) -> list[int]:
    return [int(t) for t in (root / "exp" / f"{name}.txt").read_text().strip().split(",")]


def test_sysu_counts_equal_generated(sysu_root: Path) -> None:
    ds = build_dataset("sysu", sysu_root)
    train_ids = set(_ids(sysu_root, "train_id") + _ids(sysu_root, "val_id"))
    test_ids = set(_ids(sysu_root, "test_id"))
    assert {r.pid for r in ds.train} == train_ids and {r.pid for r in ds.test} == test_ids
    assert len(ds.train) == len(train_ids) * 6 * 4 and len(ds.test) == len(test_ids) * 6 * 4
    for r in ds.train + ds.test:
        assert Path(r.path).is_file()
        assert r.modality == ("ir" if r.camid in (3, 6) else "rgb")
        assert Path(r.path).parent.name == f"{r.pid:04d}" and Path(r.path).parent.parent.name == f"cam{r.camid}"


@pytest.mark.parametrize("trial", [1, 10])
def test_regdb_counts_equal_split_files(regdb_root: Path, trial: int) -> None:
    ds = build_dataset("regdb", regdb_root, trial=trial)
    for split, records in (("train", ds.train), ("test", ds.test)):
        assert len(records) == 5 * 4 * 2
        assert sum(r.modality == "rgb" and r.camid == 1 for r in records) == 20
        assert sum(r.modality == "ir" and r.camid == 2 for r in records) == 20
        listed = {int(line.split()[1]) for line in
                  (regdb_root / "idx" / f"{split}_visible_{trial}.txt").read_text().splitlines()}
        assert {r.pid for r in records} == listed
    assert not {r.pid for r in ds.train} & {r.pid for r in ds.test}


def test_real_format_quirks(sysu_root: Path, tmp_path: Path) -> None:
    # Real SYSU-MM01: not every person is in every camera, id files may lack a trailing newline.
    root = tmp_path / "sysu"
    shutil.copytree(sysu_root, root)
    test_ids = _ids(root, "test_id")
    shutil.rmtree(root / "cam3" / f"{test_ids[0]:04d}")
    (root / "exp" / "test_id.txt").write_text(",".join(map(str, test_ids)))
    ds = build_dataset("sysu", root)
    assert len(ds.test) == len(test_ids) * 6 * 4 - 4
    # Real RegDB: .bmp files with long names, 0-based labels.
    reg = tmp_path / "regdb"
    for sub in ("Visible/7", "Thermal/7", "idx"):
        (reg / sub).mkdir(parents=True)
    img = np.zeros((128, 64, 3), np.uint8)
    cv2.imwrite(str(reg / "Visible/7/female_front_v_00001_1.bmp"), img)
    cv2.imwrite(str(reg / "Thermal/7/female_front_t_00001_1.bmp"), img)
    for split in ("train", "test"):
        (reg / "idx" / f"{split}_visible_1.txt").write_text("Visible/7/female_front_v_00001_1.bmp 0\n")
        (reg / "idx" / f"{split}_thermal_1.txt").write_text("Thermal/7/female_front_t_00001_1.bmp 0\n")
    ds = build_dataset("regdb", reg, trial=1)
    assert ds.train == [Record(str(reg / "Visible/7/female_front_v_00001_1.bmp"), 0, 1, "rgb"),
                        Record(str(reg / "Thermal/7/female_front_t_00001_1.bmp"), 0, 2, "ir")]


def test_build_dataset_errors_name_valid_values(sysu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid names: regdb, sysu"):
        build_dataset("market1501", sysu_root)
    with pytest.raises(UserError, match="does not take"):
        build_dataset("sysu", sysu_root, trial=1)
    with pytest.raises(UserError, match="trial must be one of 1..10"):
        build_dataset("regdb", tmp_path, trial=11)
    with pytest.raises(ValueError, match="modality"):
        Record("x.jpg", 1, 1, "thermal")


def test_missing_and_malformed_sysu(sysu_root: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        build_dataset("sysu", tmp_path / "nope")
    root = tmp_path / "sysu"
    shutil.copytree(sysu_root, root)
    (root / "exp" / "val_id.txt").write_text("1,2,x\n")
    with pytest.raises(UserError, match=r"malformed id file .*val_id\.txt"):
        build_dataset("sysu", root)
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(UserError, match=r"missing id file .*val_id\.txt"):
        build_dataset("sysu", root)
    shutil.rmtree(root / "cam3")
    with pytest.raises(UserError, match="lacks camera folder.*cam3"):
        build_dataset("sysu", root)


def test_missing_and_malformed_regdb(regdb_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "regdb"
    shutil.copytree(regdb_root, root)
    f = root / "idx" / "train_thermal_2.txt"
    f.write_text("Thermal/1/0001.jpg one\n")
    with pytest.raises(UserError, match=r"malformed line 1 of .*train_thermal_2\.txt"):
        build_dataset("regdb", root, trial=2)
    f.write_text("Thermal/1/9999.jpg 1\n")
    with pytest.raises(UserError, match="does not exist"):
        build_dataset("regdb", root, trial=2)
    f.unlink()
    with pytest.raises(UserError, match=r"missing split file .*train_thermal_2\.txt"):
        build_dataset("regdb", root, trial=2)
    shutil.rmtree(root / "Thermal")
    with pytest.raises(UserError, match="lacks the folder Thermal/"):
        build_dataset("regdb", root, trial=1)


def test_read_image_rgb_order_and_resize(tmp_path: Path) -> None:
    bgr = np.zeros((40, 20, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    bgr[:10, :, 2] = 50
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), bgr)
    img = read_image(path, 40, 20)
    assert img.dtype == np.uint8 and img.shape == (40, 20, 3)
    assert np.array_equal(img, bgr[..., ::-1])
    expected = cv2.resize(bgr[..., ::-1], (8, 16), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(read_image(path, 16, 8), expected)
    grey = tmp_path / "g.png"
    cv2.imwrite(str(grey), np.arange(200, dtype=np.uint8).reshape(20, 10))
    g = read_image(grey, 20, 10)
    assert g.shape == (20, 10, 3) and np.array_equal(g[..., 0], g[..., 2])


def test_read_image_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        read_image(tmp_path / "missing.jpg", 8, 4)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a decodable image"):
        read_image(bad, 8, 4)
