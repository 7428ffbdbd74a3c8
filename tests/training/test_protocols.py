"""SYSU-MM01 / RegDB protocol drivers on the conftest synthetic trees and on hand-made records."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from training.data import build_dataset
from training.data.records import Record
from training.protocols import (
    draw_sysu_gallery,
    evaluate_regdb,
    evaluate_sysu,
    evaluate_sysu_features,
    split_sysu,
    sysu_galleries,
)


class CountingModel(nn.Module):
    """Stands in for a DFE: 3-d colour-mean descriptors, and a log of how many images it embedded."""

    height, width, descriptor_dim = 32, 16, 3

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return x.float().mean(dim=(2, 3)) + self.dummy


@pytest.fixture(scope="module")
def sysu_test(sysu_root):
    return build_dataset("sysu", sysu_root).test


def test_split_sysu_queries_and_pools(sysu_test):
    queries, pool = split_sysu(sysu_test, "all")
    test_ids = {r.pid for r in sysu_test}
    assert {r.camid for r in queries} == {3, 6} and {r.pid for r in queries} == test_ids
    # Every test image of cams 3 and 6 is a query: 4 images per camera per identity in the fixture.
    assert len(queries) == len([r for r in sysu_test if r.camid in (3, 6)])
    assert {r.camid for r in pool} == {1, 2, 4, 5}
    _, indoor_pool = split_sysu(sysu_test, "indoor")
    assert {r.camid for r in indoor_pool} == {1, 2}
    with pytest.raises(ValueError, match="valid values: all, indoor"):
        split_sysu(sysu_test, "outdoor")


@pytest.mark.parametrize("mode,cams", [("all", {1, 2, 4, 5}), ("indoor", {1, 2})])
def test_single_shot_is_one_image_per_identity_per_camera(sysu_test, mode, cams):
    _, pool = split_sysu(sysu_test, mode)
    gallery = [pool[i] for i in draw_sysu_gallery(pool, mode, "single", seed=0)]
    counts = Counter((r.pid, r.camid) for r in gallery)
    expected = {(r.pid, r.camid) for r in pool}
    assert set(counts) == expected and set(counts.values()) == {1}
    assert {c for _, c in counts} == cams


def test_multi_shot_takes_ten_or_all():
    # 15 images of (pid 1, cam 1), 4 of (pid 1, cam 2), 12 of (pid 2, cam 4): 10, 4 and 10 are drawn.
    pool = ([Record(f"/x/1_1_{n}.jpg", 1, 1, "rgb") for n in range(15)]
            + [Record(f"/x/1_2_{n}.jpg", 1, 2, "rgb") for n in range(4)]
            + [Record(f"/x/2_4_{n}.jpg", 2, 4, "rgb") for n in range(12)])
    gallery = [pool[i] for i in draw_sysu_gallery(pool, "all", "multi", seed=3)]
    assert Counter((r.pid, r.camid) for r in gallery) == {(1, 1): 10, (1, 2): 4, (2, 4): 10}
    assert len({r.path for r in gallery}) == len(gallery)  # drawn without replacement
    # Indoor-search multi-shot ignores camera 4 entirely.
    indoor = [pool[i] for i in draw_sysu_gallery(pool, "indoor", "multi", seed=3)]
    assert Counter((r.pid, r.camid) for r in indoor) == {(1, 1): 10, (1, 2): 4}


def test_multi_shot_on_fixture_tree(sysu_test):
    _, pool = split_sysu(sysu_test, "all")
    # The fixture has 4 images per identity per camera, fewer than 10: multi-shot takes all of them.
    assert len(draw_sysu_gallery(pool, "all", "multi", seed=0)) == len(pool)


def test_trials_differ_by_seed_and_repeat_with_same_seed():
    pool = [Record(f"/x/{p}_{c}_{n}.jpg", p, c, "rgb") for p in range(1, 6) for c in (1, 2, 4, 5)
            for n in range(8)]
    a = sysu_galleries(pool, "all", "single", trials=10, seed=0)
    b = sysu_galleries(pool, "all", "single", trials=10, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({tuple(g) for g in a}) == 10  # 8^20 possible galleries: ten distinct draws
    c = sysu_galleries(pool, "all", "single", trials=10, seed=100)
    assert not np.array_equal(a[0], c[0])
    assert np.array_equal(a[1], draw_sysu_gallery(pool, "all", "single", seed=1))  # trial t uses seed + t
    with pytest.raises(ValueError, match="valid values: single, multi"):
        draw_sysu_gallery(pool, "all", "triple", seed=0)


def test_perfect_features_score_one_with_zero_spread(sysu_test):
    queries, pool = split_sysu(sysu_test, "all")
    pids = sorted({r.pid for r in sysu_test})
    onehot = lambda recs: np.eye(len(pids), dtype=np.float32)[[pids.index(r.pid) for r in recs]]  # noqa: E731
    galleries = sysu_galleries(pool, "all", "single", trials=3, seed=0)
    res = evaluate_sysu_features(onehot(queries), queries, onehot(pool), pool, galleries)
    m = res.metrics
    assert (m["r1"], m["mAP"], m["mINP"], m["r1_std"], m["trials"]) == (1.0, 1.0, 1.0, 0.0, 3)
    assert len(res.per_trial) == 3 and len(m["cmc"]) == 20
    dist, _q, g = res.example
    assert dist.shape == (len(queries), len(galleries[0])) and len(g) == len(galleries[0])


def test_evaluate_sysu_embeds_each_image_once(sysu_test):
    model = CountingModel()
    queries, pool = split_sysu(sysu_test, "all")
    res = evaluate_sysu(model, sysu_test, "all", "single", trials=4, seed=0, batch_size=7)
    union = np.unique(np.concatenate(sysu_galleries(pool, "all", "single", trials=4, seed=0)))
    assert model.seen == len(queries) + len(union)
    m = res.metrics
    assert 0 <= m["r1"] <= m["r5"] <= m["r10"] <= m["r20"] <= 1 and 0 < m["mAP"] <= 1 and m["trials"] == 4
    # A shared cache lets a second setting (indoor) reuse every descriptor already computed.
    cache: dict = {}
    evaluate_sysu(model, sysu_test, "all", "multi", trials=1, cache=cache)
    seen = model.seen
    evaluate_sysu(model, sysu_test, "indoor", "single", trials=2, cache=cache)
    assert model.seen == seen


def test_regdb_both_directions(regdb_root):
    test = build_dataset("regdb", regdb_root, trial=1).test
    model = CountingModel()
    res = evaluate_regdb(model, test, batch_size=16)
    assert set(res) == {"visible_to_thermal", "thermal_to_visible"}
    assert model.seen == len(test)  # both directions share one embedding of each image
    _, q, g = res["visible_to_thermal"].example
    assert {r.modality for r in q} == {"rgb"} and {r.modality for r in g} == {"ir"}
    _, q, g = res["thermal_to_visible"].example
    assert {r.modality for r in q} == {"ir"} and {r.modality for r in g} == {"rgb"}
    assert res["thermal_to_visible"].metrics["trials"] == 1


def test_rerank_flag_keeps_perfect_features_perfect(sysu_test):
    queries, pool = split_sysu(sysu_test, "all")
    pids = sorted({r.pid for r in sysu_test})
    rng = np.random.default_rng(0)
    # Identity centres plus small noise: well separated, so re-ranking must not break rank-1.
    centres = rng.normal(size=(len(pids), 8)).astype(np.float32)
    feats = lambda recs: centres[[pids.index(r.pid) for r in recs]] + 0.01 * rng.normal(size=(len(recs), 8))  # noqa: E731
    galleries = sysu_galleries(pool, "all", "multi", trials=1, seed=0)
    res = evaluate_sysu_features(feats(queries), queries, feats(pool).astype(np.float32), pool, galleries,
                                 rerank=True)
    assert res.metrics["r1"] == 1.0 and res.metrics["mAP"] > 0.99


def test_cosine_distance_and_extract_features(sysu_test):
    from training.data.images import read_image
    from training.features import cosine_distance, extract_features

    q = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    g = np.array([[6.0, 8.0], [0.0, 2.0], [-1.0, 0.0]], dtype=np.float32)
    # Row 0: same direction (0), cos = 4/5 (1 - 0.8), opposite-ish cos = -3/5 (1.6); row 1: 1 - 0.6, 1, 2.
    np.testing.assert_allclose(cosine_distance(q, g), [[0.0, 0.2, 1.6], [0.4, 1.0, 2.0]], atol=1e-6)
    with pytest.raises(ValueError, match="same D"):
        cosine_distance(q, np.zeros((2, 3)))
    model = CountingModel()
    paths = [r.path for r in sysu_test[:5]]
    feats = extract_features(model, paths, batch_size=2)
    expected = np.stack([read_image(p, 32, 16).reshape(-1, 3).mean(axis=0) for p in paths])
    assert feats.dtype == np.float32 and feats.shape == (5, 3)
    np.testing.assert_allclose(feats, expected, rtol=1e-5)


def _community_single_shot(root, mode: str, trial: int) -> list[str]:
    """The public baseline's ``process_gallery_sysu`` single-shot loop, restated as the reference."""
    import os
    import random as pyrandom

    pyrandom.seed(trial)
    cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(root, "exp/test_id.txt")) as fh:
        ids = [f"{int(y):04d}" for y in fh.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(root, cam, pid)
            if os.path.isdir(img_dir):
                files.append(pyrandom.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
    return files


@pytest.fixture
def uneven_sysu_tree(tmp_path):
    """Test ids 7, 12, 3 (unsorted in the file); uneven file counts; a missing camera folder."""
    import cv2

    img = np.zeros((8, 4, 3), np.uint8)
    counts = {(3, 1): 5, (3, 2): 3, (3, 4): 7, (3, 5): 2, (7, 1): 4, (7, 4): 6, (7, 5): 9,
              (12, 1): 11, (12, 2): 1, (12, 4): 3, (12, 5): 8}
    for cam in (3, 6):
        counts.update({(p, cam): 2 for p in (3, 7, 12)})
    counts.update({(p, cam): 1 for p in (20, 21) for cam in (1, 3)})  # train / val people
    for (pid, cam), n in counts.items():
        d = tmp_path / f"cam{cam}" / f"{pid:04d}"
        d.mkdir(parents=True)
        for k in reversed(range(n)):  # created in reverse so that listdir order is not the sorted order
            cv2.imwrite(str(d / f"{k + 1:04d}.jpg"), img)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "test_id.txt").write_text("7,12,3\n")
    (tmp_path / "exp" / "train_id.txt").write_text("20\n")  # the parser needs a train split; unused here
    (tmp_path / "exp" / "val_id.txt").write_text("21\n")
    return tmp_path


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_single_shot_galleries_are_the_community_files(uneven_sysu_tree, mode):
    from pathlib import Path

    test = build_dataset("sysu", uneven_sysu_tree).test
    _, pool = split_sysu(test, mode)
    for trial, idx in enumerate(sysu_galleries(pool, mode, "single", trials=10, seed=0)):
        ours = sorted(str(Path(pool[i].path).resolve()) for i in idx)
        theirs = sorted(str(Path(p).resolve()) for p in _community_single_shot(str(uneven_sysu_tree), mode, trial))
        assert ours == theirs, f"trial {trial}"
    # Pinned: trial 0 of all-search (Python's random.choice has been stable since 3.2).
    first = [pool[i] for i in draw_sysu_gallery(pool, "all", "single", seed=0)] if mode == "all" else None
    if first is not None:
        picked = sorted(f"cam{r.camid}/{r.pid:04d}/{Path(r.path).name}" for r in first)
        assert picked == sorted(Path(p).relative_to(uneven_sysu_tree).as_posix()
                                for p in _community_single_shot(str(uneven_sysu_tree), "all", 0))
        assert len(picked) == 11  # 3 ids x 4 cameras, id 7 has no cam2 folder
