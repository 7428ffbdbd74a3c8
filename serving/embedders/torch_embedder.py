"""PyTorch embedder: runs a training checkpoint directly (a stand-in before export, and a parity reference).

Optional by design (ARCHITECTURE §2): torch and ``training`` are imported only when this backend is
chosen, so a serving image built for ONNX Runtime or TensorRT need not carry them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from serving.embedders.base import Embedder, file_sha256
from xmreid.errors import UserError

logger = logging.getLogger(__name__)


class TorchEmbedder(Embedder):
    """Runs ``training.model.DFE`` rebuilt from a checkpoint, in eval mode, under ``torch.inference_mode``.

    The fingerprint is the sha256 of the ``.pt`` file, so a gallery built with this backend is tied to the
    checkpoint (not to an ONNX export of it, whose bytes differ). ``thread_safe`` is False: concurrent
    forwards would only compete for torch's intra-op thread pool, so serialising them costs nothing.

    Args:
        path: the checkpoint (``last.pt``).
        device: torch device string, e.g. ``"cpu"`` or ``"cuda:0"``; default CUDA when available.
    """

    name = "torch"
    thread_safe = False

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        super().__init__()
        try:
            import torch

            from training.model import load_checkpoint
        except ImportError as exc:
            raise UserError(f"backend 'torch' needs torch and the training package ({exc}); "
                            "use an exported ONNX model with backend 'onnxruntime' instead") from exc
        self.path = Path(path)
        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model, _ckpt = load_checkpoint(self.path, map_location=str(self.device))  # raises serving's UserError
        self._model = model.eval()
        self.height, self.width, self.dim = int(model.height), int(model.width), int(model.descriptor_dim)
        self.fingerprint = file_sha256(self.path)
        logger.info("loaded checkpoint %s with torch on %s: input %dx%d, dim %d",
                    self.path.name, self.device, self.height, self.width, self.dim)

    def _run(self, batch_nchw: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            # uint8 goes in as is: the model casts and normalises inside (docs/contracts.md).
            x = torch.from_numpy(batch_nchw).to(self.device)
            return self._model(x).float().cpu().numpy()

    def info(self) -> dict:
        return {**super().info(), "device": str(self.device)}
