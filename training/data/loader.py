"""Torch ``DataLoader`` for two-stream training: batches of (RGB, IR, label) pairs.

Images stay uint8 all the way to the model (normalisation is inside it, docs/contracts.md).
Augmentation randomness comes from a seed the sampler attaches to each pair, so a fixed seed gives
identical batches whatever ``num_workers`` is. A small training set can be decoded once into one uint8
array (``cache_images``): the pixels are those :func:`read_image` returns, so the batches are identical too,
without a JPEG decode and resize per image per step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.data.images import read_image
from training.data.records import Record
from training.data.sampler import Pair, PairedBatchSampler
from training.data.transforms import TrainTransform, channel_augment, grey_remap, random_erasing

log = logging.getLogger(__name__)


def decode_all(records: Sequence[Record], height: int, width: int) -> np.ndarray:
    """Every record's image as :func:`read_image` gives it, in one ``[N, height, width, 3]`` uint8 array."""
    tic = time.perf_counter()
    out = np.empty((len(records), height, width, 3), dtype=np.uint8)
    for i, r in enumerate(records):
        out[i] = read_image(r.path, height, width)
    log.info("decoded %d training images into memory (%.0f MB) in %.1f s", len(records), out.nbytes / 2**20,
             time.perf_counter() - tic)
    return out


class PairDataset(Dataset):
    """Maps a sampled :data:`Pair` to ``(rgb uint8 [3,H,W], ir uint8 [3,H,W], label int64)``.

    Args:
        records: The records the pair indices point into.
        pid_to_label: Person id -> training label.
        height: Model input height.
        width: Model input width.
        augment: Flip + pad-and-crop on both images.
        channel_aug: Probability of channel augmentation of the visible image (``channel_augment``).
        erasing: Probability of random erasing, drawn independently for each image.
        remap: Probability of random grey-level remapping of each grey image (infrared, or visible
            after channel augmentation; ``grey_remap``).
        images: The records' decoded images (:func:`decode_all`), or None to read each from disk when used.

    ``strength`` (set per epoch through :meth:`TrainLoader.set_epoch`) scales the three
    probabilities, for a warm-up of the augmentation.
    """

    def __init__(self, records: Sequence[Record], pid_to_label: dict[int, int], height: int, width: int,
                 augment: bool, channel_aug: float = 0.0, erasing: float = 0.0, remap: float = 0.0,
                 images: np.ndarray | None = None) -> None:
        if images is not None and images.shape != (len(records), height, width, 3):
            raise ValueError(f"images must be [{len(records)}, {height}, {width}, 3], got {images.shape}")
        self.records, self.pid_to_label, self.images = list(records), pid_to_label, images
        self.height, self.width = height, width
        self.transform = TrainTransform(height, width) if augment else None
        self.channel_aug, self.erasing, self.remap = float(channel_aug), float(erasing), float(remap)
        self.strength = 1.0

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, rng: np.random.Generator, visible: bool) -> torch.Tensor:
        if self.images is not None:
            img = self.images[index]
        else:
            img = read_image(self.records[index].path, self.height, self.width)
        if self.transform is not None:
            img = self.transform(img, rng)
        k = self.strength
        if visible:
            img = channel_augment(img, rng, k * self.channel_aug)
        img = grey_remap(img, rng, k * self.remap)
        img = random_erasing(img, rng, k * self.erasing)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    def __getitem__(self, pair: Pair) -> tuple[torch.Tensor, torch.Tensor, int]:
        rgb_i, ir_i, aug_seed = pair
        rng = np.random.default_rng(aug_seed)
        label = self.pid_to_label[self.records[rgb_i].pid]
        return self._load(rgb_i, rng, True), self._load(ir_i, rng, False), label


class TrainLoader:
    """Iterable of ``(rgb uint8 [N,3,H,W], ir uint8 [N,3,H,W], labels int64 [N])`` batches.

    Attributes:
        num_classes: Number of training identities (labels are 0..num_classes-1, sorted pids).
        pid_to_label: Person id -> label.
        sampler: The :class:`PairedBatchSampler`.
        loader: The underlying ``torch.utils.data.DataLoader``.
    """

    def __init__(self, loader: DataLoader, sampler: PairedBatchSampler, aug_warmup_epochs: float = 0.0) -> None:
        self.loader, self.sampler = loader, sampler
        self.aug_warmup_epochs = float(aug_warmup_epochs)
        self.num_classes = sampler.num_classes
        self.pid_to_label = dict(sampler.pid_to_label)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (pairing, order and augmentation are functions of (seed, epoch)).

        During the augmentation warm-up, epoch ``e`` (0-based) runs the channel augmentation, grey
        remapping and erasing at ``(e + 1) / (warm-up epochs + 1)`` of their probabilities.
        """
        self.sampler.set_epoch(epoch)
        w = self.aug_warmup_epochs
        self.loader.dataset.strength = 1.0 if w <= 0 else min(1.0, (epoch + 1) / (w + 1))

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for rgb, ir, labels in self.loader:
            yield rgb, ir, labels.to(torch.int64)


def build_train_loader(records: Sequence[Record], *, height: int, width: int, batch_pairs: int, mode: str,
                       seed: int, augment: bool = True, num_workers: int = 0, drop_last: bool = False,
                       pin_memory: bool = False, pairs_per_id: int = 1, channel_aug: float = 0.0,
                       erasing: float = 0.0, remap: float = 0.0, aug_warmup_epochs: float = 0.0,
                       cache_images: bool = False) -> TrainLoader:
    """Build the two-stream training loader.

    Args:
        records: Training records (both modalities; people lacking one modality are left out).
        height: Model input height.
        width: Model input width.
        batch_pairs: N, the number of (RGB, IR) pairs per batch (the paper uses 32).
        mode: ``"sysu"`` (walk RGB images, random IR partner) or ``"regdb"`` (every image once).
        seed: Seed of pairing, order and augmentation.
        augment: Random flip + pad-and-crop when True.
        num_workers: DataLoader worker processes (0 = load in this process).
        drop_last: Drop a final batch smaller than ``batch_pairs``.
        pin_memory: Pin host memory (useful when training on a GPU).
        pairs_per_id: K > 1 gives identity-balanced batches of ``batch_pairs / K`` people with K
            pairs each (see ``PairedBatchSampler``); 1 keeps the paper's walk.
        channel_aug: Probability of channel augmentation of each visible image.
        erasing: Probability of random erasing of each image.
        remap: Probability of random grey-level remapping of each grey image.
        aug_warmup_epochs: Ramp the three augmentation probabilities up over this many epochs.
        cache_images: Decode the records once into memory (``N * height * width * 3`` bytes) instead of
            at every use.

    Returns:
        A :class:`TrainLoader` with ``num_classes``, ``set_epoch(epoch)`` and ``len()`` = batches per epoch.
    """
    sampler = PairedBatchSampler(records, batch_pairs, mode, seed=seed, drop_last=drop_last, pairs_per_id=pairs_per_id)
    images = decode_all(records, height, width) if cache_images else None
    dataset = PairDataset(records, sampler.pid_to_label, height, width, augment, channel_aug, erasing, remap, images)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=False)
    return TrainLoader(loader, sampler, aug_warmup_epochs)
