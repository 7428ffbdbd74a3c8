"""Paired two-stream sampler (paper §4.2), train transforms and the training loader."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import build_dataset
from training.data.images import read_image
from training.data.loader import build_train_loader
from training.data.records import Record
from training.data.sampler import PairedBatchSampler
from training.data.transforms import TrainTransform, default_pad
from xmreid.errors import UserError


def _records() -> list[Record]:
    """pid 10: 5 RGB / 2 IR, pid 3: 2 RGB / 4 IR, pid 7: 3 RGB / 3 IR, pid 99: RGB only (left out)."""
    out = []
    for pid, n_rgb, n_ir in ((10, 5, 2), (3, 2, 4), (7, 3, 3), (99, 4, 0)):
        out += [Record(f"{pid}_v{i}.jpg", pid, 1, "rgb") for i in range(n_rgb)]
        out += [Record(f"{pid}_t{i}.jpg", pid, 3, "ir") for i in range(n_ir)]
    return out


def _pairs(sampler: PairedBatchSampler) -> list[tuple[int, int, int]]:
    return [p for batch in sampler for p in batch]


def test_sysu_mode_walks_every_rgb_image_once() -> None:
    recs = _records()
    s = PairedBatchSampler(recs, batch_pairs=4, mode="sysu", seed=0)
    assert s.pid_to_label == {3: 0, 7: 1, 10: 2} and s.num_classes == 3
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) == 3 and [len(b) for b in batches] == [4, 4, 2]
        pairs = [p for b in batches for p in b]
        assert all(recs[a].pid == recs[b].pid for a, b, _ in pairs)
        assert all(recs[a].modality == "rgb" and recs[b].modality == "ir" for a, b, _ in pairs)
        rgb_wanted = [i for i, r in enumerate(recs) if r.modality == "rgb" and r.pid != 99]
        assert sorted(a for a, _, _ in pairs) == rgb_wanted


def test_regdb_mode_walks_every_image_once() -> None:
    recs = _records()
    s = PairedBatchSampler(recs, batch_pairs=3, mode="regdb", seed=1)
    pairs = _pairs(s)
    assert len(pairs) == s.pairs_per_epoch == 5 + 4 + 3
    assert all(recs[a].pid == recs[b].pid and recs[a].modality == "rgb" and recs[b].modality == "ir"
               for a, b, _ in pairs)
    used = Counter([a for a, _, _ in pairs] + [b for _, b, _ in pairs])
    wanted = [i for i, r in enumerate(recs) if r.pid != 99]
    assert sorted(used) == wanted  # every image of every usable person at least once
    for pid in (7,):  # equal counts: each image exactly once
        assert all(used[i] == 1 for i, r in enumerate(recs) if r.pid == pid)


def test_sampler_is_deterministic_in_seed_and_epoch() -> None:
    recs = _records()
    a = PairedBatchSampler(recs, 4, "regdb", seed=3)
    b = PairedBatchSampler(recs, 4, "regdb", seed=3)
    assert _pairs(a) == _pairs(b)
    b.set_epoch(1)
    assert _pairs(a) != _pairs(b)
    assert _pairs(a) != _pairs(PairedBatchSampler(recs, 4, "regdb", seed=4))
    a.set_epoch(1)
    assert _pairs(a) == _pairs(b)


def test_sampler_errors_and_drop_last() -> None:
    recs = _records()
    with pytest.raises(UserError, match="one of"):
        PairedBatchSampler(recs, 4, "market", seed=0)
    with pytest.raises(UserError, match="both RGB and IR"):
        PairedBatchSampler([r for r in recs if r.modality == "rgb"], 4, "sysu")
    s = PairedBatchSampler(recs, 4, "sysu", drop_last=True)
    assert len(s) == 2 and all(len(b) == 4 for b in s)


def test_train_transform_flip_and_pad_crop() -> None:
    img = np.arange(16 * 8 * 3, dtype=np.uint8).reshape(16, 8, 3)
    flip = TrainTransform(16, 8, flip_p=1.0, pad=0)(img, np.random.default_rng(0))
    assert np.array_equal(flip, img[:, ::-1])
    t = TrainTransform(16, 8, flip_p=0.0, pad=2)
    out = t(img, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    rng.random()
    y, x = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    padded = np.zeros((20, 12, 3), np.uint8)
    padded[2:18, 2:10] = img
    assert out.dtype == np.uint8 and np.array_equal(out, padded[y:y + 16, x:x + 8])
    assert default_pad(384, 128) == 10 and default_pad(192, 64) == 5
    assert TrainTransform(8, 4, pad=0)(img, np.random.default_rng(0)).shape == (8, 4, 3)


def _batches(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_batches_follow_the_contract(sysu_root: Path) -> None:
    train = build_dataset("sysu", sysu_root).train
    loader = build_train_loader(train, height=64, width=32, batch_pairs=16, mode="sysu", seed=0)
    n_rgb = sum(r.modality == "rgb" for r in train)
    assert len(loader) == -(-n_rgb // 16) and loader.num_classes == len({r.pid for r in train})
    batches = _batches(loader)
    assert len(batches) == len(loader)
    rgb, ir, labels = batches[0]
    assert rgb.dtype == ir.dtype == torch.uint8 and labels.dtype == torch.int64
    assert rgb.shape == ir.shape == (16, 3, 64, 32)
    # IR images are grey, RGB images are not: the streams carry the right modality.
    assert (ir[:, 0].int() - ir[:, 2].int()).abs().max() <= 3
    assert (rgb[:, 0].int() - rgb[:, 2].int()).abs().max() > 30
    assert sum(len(b[2]) for b in batches) == n_rgb
    # Without augmentation a batch is exactly the decoded images of the sampled pairs.
    plain = build_train_loader(train, height=64, width=32, batch_pairs=4, mode="regdb", seed=0, augment=False)
    first = next(iter(plain.sampler))
    rgb, ir, labels = next(iter(plain))
    for j, (a, b, _) in enumerate(first):
        assert np.array_equal(rgb[j].permute(1, 2, 0).numpy(), read_image(train[a].path, 64, 32))
        assert np.array_equal(ir[j].permute(1, 2, 0).numpy(), read_image(train[b].path, 64, 32))
        assert labels[j] == plain.pid_to_label[train[a].pid] == plain.pid_to_label[train[b].pid]


def test_loader_is_deterministic(sysu_root: Path) -> None:
    train = build_dataset("sysu", sysu_root).train
    kw = dict(height=48, width=16, batch_pairs=32, mode="sysu")
    a = _batches(build_train_loader(train, seed=1, **kw))
    b = _batches(build_train_loader(train, seed=1, num_workers=1, **kw))  # worker process: same pixels
    c = _batches(build_train_loader(train, seed=2, **kw))
    assert len(a) == len(b) == len(c)
    assert all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))
    assert not all(torch.equal(x, y) for ba, bc in zip(a, c) for x, y in zip(ba, bc))
    loader = build_train_loader(train, seed=1, **kw)
    loader.set_epoch(1)
    assert not torch.equal(_batches(loader)[0][0], a[0][0])
    # Decoded once into memory, with every augmentation on: the same batches as decoding at every use.
    aug = dict(kw, channel_aug=0.5, remap=0.5, erasing=0.5)
    cached = _batches(build_train_loader(train, seed=1, cache_images=True, **aug))
    decoded = _batches(build_train_loader(train, seed=1, **aug))
    assert all(torch.equal(x, y) for ba, bb in zip(cached, decoded) for x, y in zip(ba, bb))
    # ... and the cache is never written to by the augmentations.
    cached_loader = build_train_loader(train, seed=1, cache_images=True, **aug)
    before = cached_loader.loader.dataset.images.copy()
    _batches(cached_loader)
    assert np.array_equal(cached_loader.loader.dataset.images, before)


def _people(n_ids: int = 6, n_rgb: int = 5, n_ir: int = 3) -> list[Record]:
    out = []
    for pid in range(n_ids):
        out += [Record(f"{pid}_v{i}.jpg", pid, 1, "rgb") for i in range(n_rgb)]
        out += [Record(f"{pid}_t{i}.jpg", pid, 3, "ir") for i in range(n_ir)]
    return out


def test_pk_batches_hold_k_pairs_of_distinct_people() -> None:
    recs = _people()
    s = PairedBatchSampler(recs, batch_pairs=8, mode="sysu", seed=0, pairs_per_id=4)
    assert s.pairs_per_epoch == 30
    batches = list(s)
    assert len(batches) == len(s) == 4 and [len(b) for b in batches] == [8, 8, 8, 6]
    for batch in batches[:3]:
        pids = [recs[a].pid for a, _, _ in batch]
        assert all(recs[a].pid == recs[b].pid for a, b, _ in batch)
        assert all(recs[a].modality == "rgb" and recs[b].modality == "ir" for a, b, _ in batch)
        runs = Counter(pids)
        assert len(runs) == 2 and set(runs.values()) == {4}  # 2 people x 4 pairs
        # The 4 RGB images of a person are distinct (5 to choose from); IR has 3, so it repeats.
        for pid in runs:
            assert len({a for a, _, _ in batch if recs[a].pid == pid}) == 4
    # Every person appears about equally often over the epoch (permutations of the 6 people).
    counts = Counter(recs[a].pid for b in batches for a, _, _ in b)
    assert max(counts.values()) - min(counts.values()) <= 4
    assert _pairs(s) == _pairs(PairedBatchSampler(recs, 8, "sysu", seed=0, pairs_per_id=4))
    with pytest.raises(UserError, match="divisor"):
        PairedBatchSampler(recs, 8, "sysu", pairs_per_id=3)


def test_channel_augment_makes_grey_from_one_channel_or_luma() -> None:
    from training.data.transforms import channel_augment

    img = np.random.default_rng(0).integers(0, 256, size=(12, 6, 3), dtype=np.uint8)
    assert channel_augment(img, np.random.default_rng(0), 0.0) is img
    seen = set()
    for seed in range(40):
        out = channel_augment(img, np.random.default_rng(seed), 1.0)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        for k in range(3):
            if np.array_equal(out[..., 0], img[..., k]):
                seen.add(k)
        luma = (img.astype(np.float64) @ [0.299, 0.587, 0.114]).round()
        if np.abs(out[..., 0] - luma).max() <= 1:
            seen.add("luma")
    assert seen == {0, 1, 2, "luma"}


def test_random_erasing_fills_one_rectangle() -> None:
    from training.data.transforms import random_erasing

    img = np.full((40, 20, 3), 7, np.uint8)
    assert random_erasing(img, np.random.default_rng(0), 0.0) is img
    for seed in range(20):
        out = random_erasing(img, np.random.default_rng(seed), 1.0)
        changed = (out != img).any(axis=2)
        ys, xs = np.nonzero(changed)
        assert ys.size > 0
        box = changed[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        area = box.size / img[..., 0].size
        assert 0.02 * 0.5 <= area <= 0.4 * 1.2  # within the sampled area range (rounding)
        assert box.mean() > 0.9  # a filled rectangle (noise equals 7 now and then)


def test_loader_channel_aug_applies_to_visible_images_only(sysu_root: Path) -> None:
    train = build_dataset("sysu", sysu_root).train
    loader = build_train_loader(train, height=32, width=16, batch_pairs=8, mode="sysu", seed=0, augment=False,
                                channel_aug=1.0)
    rgb, ir, _ = next(iter(loader))
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])  # grey
    first = next(iter(loader.sampler))
    for j, (_, b, _) in enumerate(first):  # infrared untouched
        assert np.array_equal(ir[j].permute(1, 2, 0).numpy(), read_image(train[b].path, 32, 16))


def test_grey_remap_redraws_levels_but_keeps_regions() -> None:
    from training.data.transforms import grey_remap

    grey = np.zeros((20, 10, 3), np.uint8)
    grey[:10] = 60   # two regions with distinct levels
    grey[10:] = 200
    assert grey_remap(grey, np.random.default_rng(0), 0.0) is grey
    colour = np.dstack([grey[..., 0], grey[..., 0] // 2, grey[..., 0]])
    assert grey_remap(colour, np.random.default_rng(0), 1.0) is colour  # colour images are left alone
    orders = set()
    for seed in range(30):
        out = grey_remap(grey, np.random.default_rng(seed), 1.0)
        assert out.dtype == np.uint8 and out.shape == grey.shape
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        top, bottom = np.unique(out[:10]), np.unique(out[10:])
        assert top.size == 1 and bottom.size == 1  # one level per region: boundaries survive
        orders.add(int(top[0]) < int(bottom[0]))
    assert orders == {True, False}  # which region is brighter is redrawn: no preferred polarity
