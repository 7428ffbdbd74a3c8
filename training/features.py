"""Offline descriptor extraction and the cosine distance used by offline evaluation.

Descriptors leave the model un-normalised (docs/contracts.md); offline evaluation L2-normalises in
:func:`cosine_distance` and nowhere else, exactly as ``index.Gallery`` does for serving, so offline
numbers and ``/search`` rankings come from the same geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from index.validate import unit_rows
from training.data.images import read_image
from xmreid.errors import UserError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` a ``--device`` option names (``auto``: CUDA when available, else CPU).

    Raises:
        UserError: not a device, CUDA asked for but absent, or a type other than cpu / cuda.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but CUDA is not available here; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: only cpu and cuda are supported")
    return device


@torch.no_grad()
def extract_features(model: torch.nn.Module, paths: Sequence[str], batch_size: int = 64,
                     progress: bool = False, flip: bool = False) -> np.ndarray:
    """Descriptors of image files, read exactly as serving reads them.

    Args:
        model: A DFE (anything with ``height``, ``width`` and an eval-mode forward that maps uint8
            ``[B, 3, H, W]`` to ``[B, D]``). It is put in eval mode and left there.
        paths: Image files; decoded and resized by ``training.data.images.read_image`` at the model's
            input size, the same pixels the serving decoder produces.
        batch_size: Images per forward pass.
        progress: Show a tqdm bar.
        flip: Also embed the horizontally flipped image and average the two descriptors. Off by
            default because the exported model / serving path does not flip, and offline numbers
            should describe what serving returns.

    Returns:
        ``np.ndarray`` float32 ``[len(paths), D]``, un-normalised, in the order of ``paths``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    height, width = int(model.height), int(model.width)
    out: list[np.ndarray] = []
    starts = range(0, len(paths), batch_size)
    for lo in tqdm(starts, desc="features", unit="batch", disable=not progress, leave=False):
        batch = np.stack([read_image(p, height, width) for p in paths[lo:lo + batch_size]])  # [B, H, W, 3]
        images = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)       # uint8 NCHW
        feats = model(images).float()
        if flip:
            feats = (feats + model(torch.flip(images, dims=[3])).float()) / 2
        out.append(feats.cpu().numpy())
    if not out:
        dim = getattr(model, "descriptor_dim", 0)
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero instead of becoming NaN): ``index.validate.unit_rows``,
    the project's one normalisation, so evaluation and the gallery rank the same way."""
    return unit_rows(x, eps)


def cosine_distance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """1 - cosine similarity between every query and gallery descriptor.

    Args:
        q: ``[num_query, D]`` descriptors (any scale; normalised here).
        g: ``[num_gallery, D]`` descriptors.

    Returns:
        float32 ``[num_query, num_gallery]`` in [0, 2], smaller = more similar.
    """
    q, g = np.asarray(q), np.asarray(g)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"q and g must be [N, D] arrays with the same D, got {q.shape} and {g.shape}")
    return (1.0 - l2_normalize(q) @ l2_normalize(g).T).astype(np.float32)
