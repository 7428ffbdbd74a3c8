"""Two-stream paired identity sampler (Hao et al., DFE, ACM MM 2019, §4.2 "Two-stream sample").

Every batch holds N (visible, infrared) pairs of the same person; pair j of the RGB stream and pair j
of the IR stream share a label, which is what the distribution and correlation losses align.

* ``"regdb"`` mode: each person's visible and thermal images are shuffled and zipped, so every image
  goes through the network once an epoch (with unequal counts the shorter side is cycled).
* ``"sysu"`` mode: the epoch walks every RGB image once, each paired with a random IR image of the
  same person (SYSU-MM01 has about twice as many RGB as IR images, so IR images repeat).
* ``pairs_per_id = K > 1`` (either mode): identity-balanced "PK" batches, as the cross-modal AGW
  baseline (Ye et al., TPAMI 2021) and every triplet-loss re-ID trainer use (Hermans et al., 2017):
  each batch holds ``N / K`` identities with K (visible, infrared) pairs each, so a batch contains
  several cross-modal positives per person and many hard negatives for a metric-learning term. The
  epoch has as many pairs as the mode's walk would have.

Only people with both modalities take part. The order is a function of ``(seed, epoch)`` only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

from training.data.records import Record
from xmreid.errors import UserError

MODES: tuple[str, ...] = ("sysu", "regdb")

#: One sampled pair: (RGB record index, IR record index, augmentation seed for the two images).
Pair = tuple[int, int, int]


class PairedBatchSampler:
    """Yields batches (lists) of :data:`Pair` over a record list.

    Attributes:
        pid_to_label: Person id -> training label 0..C-1 (sorted pids of people with both modalities).
        num_classes: C.
        pairs_per_epoch: Number of pairs an epoch yields.
    """

    def __init__(self, records: Sequence[Record], batch_pairs: int, mode: str, seed: int = 0,
                 drop_last: bool = False, pairs_per_id: int = 1) -> None:
        if mode not in MODES:
            raise UserError(f"sampler mode must be one of {MODES}, got {mode!r}")
        if int(batch_pairs) != batch_pairs or batch_pairs < 1:
            raise UserError(f"batch_pairs must be a positive integer, got {batch_pairs!r}")
        if int(pairs_per_id) != pairs_per_id or not 1 <= pairs_per_id <= batch_pairs or batch_pairs % pairs_per_id:
            raise UserError(f"pairs_per_id must be a positive divisor of batch_pairs={batch_pairs}, got {pairs_per_id!r}")
        self.batch_pairs, self.mode, self.seed, self.drop_last = int(batch_pairs), mode, int(seed), drop_last
        self.pairs_per_id = int(pairs_per_id)
        self.epoch = 0
        by_pid: dict[int, dict[str, list[int]]] = defaultdict(lambda: {"rgb": [], "ir": []})
        for i, r in enumerate(records):
            by_pid[r.pid][r.modality].append(i)
        self._by_pid = {p: m for p, m in sorted(by_pid.items()) if m["rgb"] and m["ir"]}
        if not self._by_pid:
            raise UserError("paired sampler: no person has both RGB and IR images in the given records")
        self.pid_to_label = {p: k for k, p in enumerate(self._by_pid)}
        self.num_classes = len(self.pid_to_label)
        if mode == "sysu":
            self.pairs_per_epoch = sum(len(m["rgb"]) for m in self._by_pid.values())
        else:
            self.pairs_per_epoch = sum(max(len(m["rgb"]), len(m["ir"])) for m in self._by_pid.values())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (as DistributedSampler does)."""
        self.epoch = int(epoch)

    def _pairs(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        pairs: list[tuple[int, int]] = []
        for m in self._by_pid.values():
            rgb, ir = np.asarray(m["rgb"]), np.asarray(m["ir"])
            if self.mode == "sysu":
                pairs += zip(rgb.tolist(), rng.choice(ir, size=len(rgb)).tolist())
            else:
                n = max(len(rgb), len(ir))
                # Shuffle each side, cycling the shorter one with fresh shuffles until it covers n.
                a = np.concatenate([rng.permutation(rgb) for _ in range(-(-n // len(rgb)))])[:n]
                b = np.concatenate([rng.permutation(ir) for _ in range(-(-n // len(ir)))])[:n]
                pairs += zip(a.tolist(), b.tolist())
        order = rng.permutation(len(pairs))
        return [pairs[k] for k in order]

    def _pk_pairs(self, rng: np.random.Generator) -> list[tuple[int, int]]:
        """Identity-balanced order: runs of K pairs of one person, N/K people per batch, no person
        twice in a batch (while the identities last), every person equally often."""
        k, people = self.pairs_per_id, list(self._by_pid.values())
        per_batch = self.batch_pairs // k
        batches = -(-self.pairs_per_epoch // self.batch_pairs)
        order: list[int] = []
        while len(order) < batches * per_batch:
            order += rng.permutation(len(people)).tolist()
        pairs: list[tuple[int, int]] = []
        for pi in order[:batches * per_batch]:
            m = people[pi]
            rgb = rng.choice(m["rgb"], size=k, replace=len(m["rgb"]) < k)
            ir = rng.choice(m["ir"], size=k, replace=len(m["ir"]) < k)
            pairs += zip(rgb.tolist(), ir.tolist())
        return pairs[:self.pairs_per_epoch]

    def __iter__(self) -> Iterator[list[Pair]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pairs = self._pk_pairs(rng) if self.pairs_per_id > 1 else self._pairs(rng)
        aug = rng.integers(0, 2**31 - 1, size=len(pairs))
        for start in range(0, len(pairs), self.batch_pairs):
            chunk = pairs[start:start + self.batch_pairs]
            if self.drop_last and len(chunk) < self.batch_pairs:
                return
            yield [(a, b, int(s)) for (a, b), s in zip(chunk, aug[start:start + len(chunk)])]

    def __len__(self) -> int:
        full, rest = divmod(self.pairs_per_epoch, self.batch_pairs)
        return full + (1 if rest and not self.drop_last else 0)
