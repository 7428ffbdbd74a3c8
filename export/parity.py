"""Shared pieces of every parity check: test images, the comparison numbers and their table.

Parity is judged by the per-row cosine similarity of descriptors because retrieval only ever compares
directions (the gallery L2-normalises, docs/contracts.md); the max absolute difference is reported too
so that a scale bug cannot hide behind a perfect cosine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.sysu import IMAGE_SUFFIXES  # the suffixes the datasets read: one list for export and training
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "compare", "format_rows", "image_batch", "parse_batch_sizes", "random_images"]



def parse_batch_sizes(text: str) -> list[int]:
    """``"1,3,8"`` -> ``[1, 3, 8]``; every size must be a positive integer."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes must be comma-separated positive integers, got {text!r}")
    return sizes


def random_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``n`` uniformly random uint8 RGB images ``[n, 3, height, width]`` (the whole input range)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3, height, width), dtype=np.uint8)


def image_batch(folder: str | Path, n: int, height: int, width: int) -> np.ndarray:
    """Up to ``n`` real crops from ``folder`` (searched recursively), decoded like training does.

    Files are taken evenly spread over the sorted list, so both modalities of a SYSU-style tree are
    represented; when the folder holds fewer than ``n`` images they are repeated.

    Returns:
        uint8 ``[n, 3, height, width]`` RGB.

    Raises:
        UserError: the folder is missing or holds no image.
    """
    from training.data.images import read_image  # the one definition of the pixels the model sees

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    picks = [files[i] for i in np.linspace(0, len(files) - 1, num=min(n, len(files))).round().astype(int)]
    images = np.stack([read_image(p, height, width) for p in picks])
    images = np.resize(images, (n, *images.shape[1:])) if len(images) < n else images  # repeat to n
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute difference and min / mean row cosine between two ``[B, D]`` descriptor arrays."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs candidate {candidate.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-30)
    return {
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "max_abs_reference": float(np.abs(ref).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def format_rows(rows: Sequence[dict[str, Any]], title: str) -> str:
    """A fixed-width table of parity rows (``source``, ``batch_size``, the :func:`compare` numbers)."""
    lines = [title, f"{'images':<8} {'batch':>5} {'max abs diff':>13} {'min cosine':>12}  result"]
    for row in rows:
        lines.append(f"{row['source']:<8} {row['batch_size']:>5} {row['max_abs_diff']:>13.3e} "
                     f"{row['min_cosine']:>12.8f}  {'ok' if row['passed'] else 'FAIL'}")
    return "\n".join(lines)
