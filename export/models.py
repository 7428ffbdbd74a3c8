"""Getting the eval-mode DFE that the export commands and benchmarks start from.

Two sources: a training checkpoint (the normal path) or a freshly initialised model with a given
architecture and input size (``--random``), which benchmarks use to time the paper's ResNet-50 at
384x128 without training one. Random weights time exactly like trained ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training.model import ARCHS, DFE, load_checkpoint
from training.paper import PAPER
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["LoadedModel", "load_model", "model_from_checkpoint", "random_model"]

# A random model only needs *some* classifier width: eval() never runs the classifiers.
_RANDOM_NUM_CLASSES = 2


@dataclass
class LoadedModel:
    """An eval-mode model plus what its metadata needs.

    Attributes:
        model: the DFE in eval mode on the CPU.
        config: the checkpoint's training config, ``None`` for a random model.
        model_config: the keyword arguments that rebuild ``model``.
        source: a human-readable origin for log lines and reports.
    """

    model: DFE
    config: dict[str, Any] | None
    model_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""


def model_from_checkpoint(checkpoint: str | Path) -> LoadedModel:
    """Load a training checkpoint into an eval-mode model on the CPU.

    Args:
        checkpoint: a ``last.pt`` written by ``python -m training train``.

    Returns:
        The model with the checkpoint's config and model config.

    Raises:
        UserError: missing or unreadable file, or not a DFE checkpoint.
    """
    model, ckpt = load_checkpoint(checkpoint, map_location="cpu")  # its UserError is export's (one class)
    config = ckpt.get("config")
    return LoadedModel(model=model.eval(), config=dict(config) if isinstance(config, dict) else None,
                       model_config=dict(ckpt["model_config"]), source=str(checkpoint))


def random_model(arch: str = PAPER.arch, *, height: int = PAPER.height, width: int = PAPER.width,
                 parts: int = PAPER.parts, embed_dim: int = PAPER.embed_dim, seed: int = 0) -> LoadedModel:
    """A randomly initialised eval-mode DFE (for benchmarks and parity checks, not for retrieval).

    Args:
        arch: one of ``training.model.ARCHS``.
        height: input height.
        width: input width.
        parts: K, the number of stripes.
        embed_dim: D, the width of each part embedding.
        seed: seeds ``torch.manual_seed`` so two calls give the same weights.

    Returns:
        The model; ``config`` is ``None`` because it was never trained.

    Raises:
        UserError: unknown arch or an impossible size.
    """
    if arch not in ARCHS:
        raise UserError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    try:
        model = DFE(_RANDOM_NUM_CLASSES, arch=arch, parts=parts, embed_dim=embed_dim, pretrained=None,
                    height=height, width=width)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return LoadedModel(model=model.eval(), config=None, model_config=model.model_config(),
                       source=f"random {arch} {height}x{width} parts={parts} seed={seed}")


def load_model(checkpoint: str | Path | None = None, **random_kwargs: Any) -> LoadedModel:
    """:func:`model_from_checkpoint` when a checkpoint is given, else :func:`random_model` (``random_kwargs``)."""
    if checkpoint is not None:
        return model_from_checkpoint(checkpoint)
    return random_model(**random_kwargs)
