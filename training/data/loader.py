"""Torch ``DataLoader`` for two-stream training: batches of (RGB, IR, label) pairs.

Images stay uint8 all the way to the model (normalisation is inside it, docs/contracts.md).
Augmentation randomness comes from a seed the sampler attaches to each pair, so a fixed seed gives
identical batches whatever ``num_workers`` is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from training.data.images import read_image
from training.data.records import Record
from training.data.sampler import Pair, PairedBatchSampler
from training.data.transforms import TrainTransform


class PairDataset(Dataset):
    """Maps a sampled :data:`Pair` to ``(rgb uint8 [3,H,W], ir uint8 [3,H,W], label int64)``."""

    def __init__(self, records: Sequence[Record], pid_to_label: dict[int, int], height: int, width: int,
                 augment: bool) -> None:
        self.records, self.pid_to_label = list(records), pid_to_label
        self.height, self.width = height, width
        self.transform = TrainTransform(height, width) if augment else None

    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        img = read_image(self.records[index].path, self.height, self.width)
        if self.transform is not None:
            img = self.transform(img, rng)
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    def __getitem__(self, pair: Pair) -> tuple[torch.Tensor, torch.Tensor, int]:
        rgb_i, ir_i, aug_seed = pair
        rng = np.random.default_rng(aug_seed)
        label = self.pid_to_label[self.records[rgb_i].pid]
        return self._load(rgb_i, rng), self._load(ir_i, rng), label


class TrainLoader:
    """Iterable of ``(rgb uint8 [N,3,H,W], ir uint8 [N,3,H,W], labels int64 [N])`` batches.

    Attributes:
        num_classes: Number of training identities (labels are 0..num_classes-1, sorted pids).
        pid_to_label: Person id -> label.
        sampler: The :class:`PairedBatchSampler`.
        loader: The underlying ``torch.utils.data.DataLoader``.
    """

    def __init__(self, loader: DataLoader, sampler: PairedBatchSampler) -> None:
        self.loader, self.sampler = loader, sampler
        self.num_classes = sampler.num_classes
        self.pid_to_label = dict(sampler.pid_to_label)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (pairing, order and augmentation are functions of (seed, epoch))."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        for rgb, ir, labels in self.loader:
            yield rgb, ir, labels.to(torch.int64)


def build_train_loader(records: Sequence[Record], *, height: int, width: int, batch_pairs: int, mode: str,
                       seed: int, augment: bool = True, num_workers: int = 0, drop_last: bool = False,
                       pin_memory: bool = False) -> TrainLoader:
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

    Returns:
        A :class:`TrainLoader` with ``num_classes``, ``set_epoch(epoch)`` and ``len()`` = batches per epoch.
    """
    sampler = PairedBatchSampler(records, batch_pairs, mode, seed=seed, drop_last=drop_last)
    dataset = PairDataset(records, sampler.pid_to_label, height, width, augment)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=False)
    return TrainLoader(loader, sampler)
