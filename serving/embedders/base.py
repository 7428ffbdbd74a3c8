"""The one interface every runtime embedder implements.

An embedder turns a batch of decoded, resized RGB crops into un-normalised descriptors
(``docs/contracts.md``: L2 normalisation happens in :class:`index.Gallery`, nowhere else).
Input validation lives here, once, so every backend rejects a wrong shape or dtype with the
same clear message instead of failing deep inside ONNX Runtime, TensorRT or torch.

What an artifact says about itself (:class:`ArtifactMetadata`, the fingerprint :func:`file_sha256`) is read
through the artifact contract, :mod:`export.artifact`, which imports neither torch nor ``training``; nor does
this module: the serving image may not carry them.
"""

from __future__ import annotations

import abc
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from export.artifact import ArtifactMetadata, file_sha256

__all__ = ["ArtifactMetadata", "Embedder", "file_sha256"]

logger = logging.getLogger(__name__)

class ModelUnavailable(RuntimeError):
    """The model cannot be reached right now (a remote model server is down or restarting): retry later.

    Raised by embedders whose model runs elsewhere (:mod:`serving.embedders.triton_embedder`); a local model
    that fails raises anything else, which is a server fault.
    """



class Embedder(abc.ABC):
    """A loaded model that maps RGB crops to descriptors.

    Subclasses set the attributes in ``__init__`` and implement :meth:`_run`; callers use :meth:`embed`.

    Attributes:
        name: the backend (``onnxruntime``, ``tensorrt`` or ``torch``).
        height: input height the model expects; images must already be resized to it.
        width: input width the model expects.
        dim: descriptor length.
        fingerprint: sha256 identifying the model, stored in a gallery's manifest so a gallery is never
            searched with descriptors from a different model.
        family: the fingerprint of the fp32 model this one computes (itself, or the parent an INT8 model
            was quantized from, ``parent_fingerprint`` in its metadata): a gallery indexed by one member of
            a family may be queried by another, with a logged notice (see :mod:`index.loading`).
        thread_safe: whether :meth:`_run` may be called from several threads at once. When it is False,
            :meth:`embed` serialises calls with a lock, so the object is always safe to share; the flag
            tells a micro-batcher whether parallel calls can actually overlap.
        max_batch_size: largest batch one :meth:`_run` call accepts (None: unbounded); :meth:`embed`
            splits bigger batches.
        path: the artifact file.
    """

    name: str
    height: int
    width: int
    dim: int
    fingerprint: str
    thread_safe: bool = False
    max_batch_size: int | None = None
    path: Path

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        """Run the model on a contiguous uint8 ``[B, 3, H, W]`` batch; return float32 ``[B, dim]``."""

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Descriptors of a batch of crops.

        Args:
            images: uint8 ``[B, H, W, 3]`` RGB, already resized to ``(height, width)`` (what
                :func:`serving.core.imageio.decode_image` returns, stacked). ``B`` may be 0.

        Returns:
            float32 ``[B, dim]``, not L2-normalised.

        Raises:
            ValueError: wrong dtype, rank, channel count or spatial size; the message says what was
                expected, because this is the error a caller with a wrongly resized image sees.
        """
        self.validate(images)
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # HWC -> CHW once here; the exported graph takes NCHW uint8 (docs/contracts.md).
        batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        step = self.max_batch_size or batch.shape[0]
        outputs = []
        for start in range(0, batch.shape[0], step):
            chunk = batch[start:start + step]
            if self.thread_safe:
                out = self._run(chunk)
            else:
                with self._lock:
                    out = self._run(chunk)
            outputs.append(out)
        result = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)
        result = np.asarray(result, dtype=np.float32)
        if result.shape != (images.shape[0], self.dim):
            raise RuntimeError(f"{self.name} embedder returned shape {result.shape}, "
                               f"expected {(images.shape[0], self.dim)}")
        return result

    def validate(self, images: np.ndarray) -> None:
        """Check that ``images`` is a uint8 ``[B, height, width, 3]`` array (see :meth:`embed`)."""
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy array, got {type(images).__name__}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 RGB, got dtype {images.dtype}")
        expected = ("B", self.height, self.width, 3)
        if images.ndim != 4 or images.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"images must have shape [B, H, W, 3] = {list(expected)} (RGB, resized to the "
                             f"model's input size), got {list(images.shape)}")

    @property
    def family(self) -> str:
        """The fp32 model this one computes: ``parent_fingerprint`` of an INT8 model, else its own fingerprint."""
        metadata = getattr(self, "metadata", None)
        raw = metadata.raw if metadata is not None else {}
        parent = raw.get("parent_fingerprint")
        if raw.get("precision") == "int8" and isinstance(parent, str) and len(parent) == 64:
            return parent
        return self.fingerprint

    def info(self) -> dict[str, Any]:
        """A JSON-ready description of the loaded model, for logs and API responses."""
        return {"backend": self.name, "height": self.height, "width": self.width, "dim": self.dim,
                "fingerprint": self.fingerprint, "family": self.family, "thread_safe": self.thread_safe,
                "max_batch_size": self.max_batch_size, "path": str(self.path)}

    def close(self) -> None:
        """Release runtime resources (sessions, GPU buffers); the default has nothing to release."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, input={self.height}x{self.width}, "
                f"dim={self.dim}, fingerprint={self.fingerprint[:12]})")
