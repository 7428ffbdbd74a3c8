"""Calibration crops for static INT8 quantization: real images of both modalities, decoded as the model sees them.

Static quantization fixes every activation's int8 range from the activations of a calibration set, so the
set has to look like what the model embeds in production: RGB gallery crops *and* infrared query crops.
Infrared crops are grey and their activation statistics differ from RGB ones (that is the modality gap the
model is trained to close), so a set of one modality only would clip or waste range on the other.

Where the images come from:

* a SYSU-MM01-layout tree (``cam1..cam6`` and ``exp/``): the records of the chosen split, RGB cameras
  1, 2, 4, 5 and infrared cameras 3, 6 (:mod:`training.data.sysu`). The default split is ``train``
  (train + val identities) so the test identities that ``python -m export verify`` scores were never seen
  by the calibration, as a held-out evaluation requires;
* any other folder: every image below it; the modality is read from the path when a folder names it
  (``cam3``/``cam6`` or ``ir``/``thermal``/``infrared``/``nir`` for infrared, ``rgb``/``visible`` or the
  other SYSU cameras for RGB), and files without such a hint count as ``unknown``.

The picks are a seeded random sample, split as evenly as the files allow between the modalities found.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.artifact import INPUT_NAME
from training.data.sysu import IMAGE_SUFFIXES  # the suffixes the datasets read
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_NUM_IMAGES", "MIN_CALIBRATION_IMAGES", "SPLITS", "CalibrationReader", "CalibrationSet",
           "select_calibration_images"]

#: Fewer images than this gave unstable ranges on the demo model (see export/quantize.py's docstring).
MIN_CALIBRATION_IMAGES = 32
DEFAULT_NUM_IMAGES = 256
SPLITS = ("train", "test", "all")

_IR_WORDS = {"ir", "nir", "infrared", "thermal"}
_RGB_WORDS = {"rgb", "visible", "vis", "color", "colour"}
_CAM = re.compile(r"cam(?:era)?_?(\d+)$", re.IGNORECASE)


@dataclass
class CalibrationSet:
    """The chosen calibration files.

    Attributes:
        files: image paths, in the order they are fed to the calibrator.
        modalities: how many files of each modality (``rgb``, ``ir``, ``unknown``) were picked.
        source: ``"sysu:<split>"`` for a SYSU-MM01 tree, ``"folder"`` otherwise.
        available: how many candidate files there were in all.
    """

    files: list[Path]
    modalities: dict[str, int] = field(default_factory=dict)
    source: str = "folder"
    available: int = 0


def _modality_from_path(path: Path) -> str:
    """``ir`` / ``rgb`` / ``unknown`` from folder names such as ``cam3`` or ``Thermal``."""
    for part in reversed(path.parts[:-1]):
        low = part.lower()
        if low in _IR_WORDS:
            return "ir"
        if low in _RGB_WORDS:
            return "rgb"
        match = _CAM.match(low)
        if match:
            return "ir" if int(match.group(1)) in (3, 6) else "rgb"
    return "unknown"


def _walk_images(folder: Path) -> list[Path]:
    """Every image file below ``folder``; an unreadable sub-folder is an error, not a silent skip."""
    def fail(exc: OSError) -> None:
        raise UserError(f"cannot read the calibration folder {exc.filename}: {exc.strerror}")

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=fail, followlinks=False):
        dirnames.sort()
        found += [Path(dirpath) / name for name in sorted(filenames) if Path(name).suffix.lower() in IMAGE_SUFFIXES]
    return found


def _is_sysu_tree(folder: Path) -> bool:
    return all((folder / f"cam{c}").is_dir() for c in range(1, 7)) and (folder / "exp" / "test_id.txt").is_file()


def _candidates(folder: Path, split: str) -> tuple[dict[str, list[Path]], str]:
    if _is_sysu_tree(folder):
        from training.data import build_dataset

        data = build_dataset("sysu", folder)  # its UserError is export's (one class)
        records = {"train": data.train, "test": data.test, "all": data.train + data.test}[split]
        groups: dict[str, list[Path]] = {}
        for record in records:
            groups.setdefault(record.modality, []).append(Path(record.path))
        return groups, f"sysu:{split}"
    groups = {}
    for path in _walk_images(folder):
        groups.setdefault(_modality_from_path(path.relative_to(folder)), []).append(path)
    return groups, "folder"


def _balanced_pick(groups: dict[str, list[Path]], n: int, rng: np.random.Generator) -> dict[str, list[Path]]:
    """``n`` files split as evenly as possible between the groups (a small group gives all it has)."""
    pools = {name: [files[i] for i in rng.permutation(len(files))] for name, files in sorted(groups.items()) if files}
    picks: dict[str, list[Path]] = {name: [] for name in pools}
    remaining = n
    while remaining > 0 and any(len(picks[k]) < len(pools[k]) for k in pools):
        open_groups = [k for k in pools if len(picks[k]) < len(pools[k])]
        share = max(1, remaining // len(open_groups))
        for name in open_groups:
            take = min(share, len(pools[name]) - len(picks[name]), remaining)
            picks[name] += pools[name][len(picks[name]):len(picks[name]) + take]
            remaining -= take
            if remaining == 0:
                break
    return picks


def select_calibration_images(folder: str | Path, num_images: int = DEFAULT_NUM_IMAGES, *, split: str = "train",
                              seed: int = 0, minimum: int = MIN_CALIBRATION_IMAGES) -> CalibrationSet:
    """Pick the calibration crops (see the module docstring for where they come from).

    Args:
        folder: a SYSU-MM01-layout tree or any folder of crops (searched recursively).
        num_images: how many to pick; all of them when the folder has fewer (but at least ``minimum``).
        split: for a SYSU-MM01 tree, ``train`` (default), ``test`` or ``all``; ignored for other folders.
        seed: seed of the random pick.
        minimum: refuse fewer images than this.

    Returns:
        The picks, RGB and infrared interleaved so that any prefix is balanced too.

    Raises:
        UserError: the folder is missing or unreadable, holds no image, or fewer than ``minimum``.
    """
    folder = Path(folder)
    if split not in SPLITS:
        raise UserError(f"unknown calibration split {split!r}; valid splits: {', '.join(SPLITS)}")
    if num_images < minimum:
        raise UserError(f"--num-images {num_images} is too few; static quantization needs at least {minimum} "
                        "calibration images")
    if not folder.is_dir():
        raise UserError(f"calibration folder {folder} does not exist or is not a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise UserError(f"calibration folder {folder} is not readable")
    groups, source = _candidates(folder, split)
    available = sum(len(files) for files in groups.values())
    if available == 0:
        raise UserError(f"calibration folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if available < minimum:
        raise UserError(f"calibration folder {folder} holds {available} images; static quantization needs at "
                        f"least {minimum}")
    picks = _balanced_pick(groups, num_images, np.random.default_rng(seed))
    if available < num_images:
        logger.warning("only %d calibration images under %s (asked for %d); using all of them", available, folder,
                       num_images)
    if "ir" not in picks or "rgb" not in picks:
        logger.warning("calibration images under %s are %s only; queries are infrared and galleries RGB, so "
                       "ranges fitted to one modality may clip the other", folder, ", ".join(picks) or "none")
    # Interleave the modalities so a prefix of the list (one calibration chunk) holds both.
    order = list(_interleave(list(picks.values())))
    modalities = {name: len(files) for name, files in picks.items()}
    logger.info("calibration: %d images from %s (%s)", len(order), source,
                ", ".join(f"{k} {v}" for k, v in modalities.items()))
    return CalibrationSet(files=order, modalities=modalities, source=source, available=available)


def _interleave(lists: Sequence[Sequence[Path]]) -> Iterator[Path]:
    longest = max((len(items) for items in lists), default=0)
    for i in range(longest):
        for items in lists:
            if i < len(items):
                yield items[i]


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over decoded crops, in batches.

    Images are decoded up front by :func:`training.data.images.read_image` (the one definition of the
    pixels the model sees), so a damaged file fails before minutes of calibration rather than in the
    middle, and are fed as uint8 NCHW: the model's own input, so the in-graph cast and normalisation are
    calibrated too. ``set_range`` (in batches) lets the calibrator work on one chunk at a time, so the
    activations of a ResNet-50 never need to be held for all images at once.

    Args:
        files: the images.
        height: model input height.
        width: model input width.
        batch_size: images per calibration run.

    Raises:
        UserError: an image cannot be decoded.
    """

    def __init__(self, files: Sequence[Path], height: int, width: int, batch_size: int = 8) -> None:
        from training.data.images import read_image

        try:
            images = np.stack([read_image(path, height, width) for path in files])
        except UserError as exc:  # the same class training raises; this only adds which step failed
            raise UserError(f"calibration: {exc}") from exc
        self.images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        self.batch_size = batch_size
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve batches ``start_index`` to ``end_index - 1`` only (ONNX Runtime's strided calibration)."""
        self._next, self._end = start_index, min(end_index, len(self))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        lo = self._next * self.batch_size
        self._next += 1
        return {INPUT_NAME: self.images[lo:lo + self.batch_size]}

    def __iter__(self) -> CalibrationReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
