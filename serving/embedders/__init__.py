"""Runtime embedders: ONNX Runtime, TensorRT and (optionally) PyTorch behind one interface.

``load_embedder`` picks the backend from the artifact's suffix and from what this machine has, so
the same command line works on a laptop (ONNX Runtime, CPU) and on a GPU server (TensorRT when an
engine was built next to the ONNX file). Backends are imported lazily: importing this package pulls
in neither onnxruntime, tensorrt nor torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from export.artifact import ArtifactMetadata, file_sha256, read_sidecar, tensorrt_unavailable_reason
from serving.core.config import BACKENDS
from serving.embedders.base import Embedder, ModelUnavailable
from xmreid.errors import UserError

__all__ = [
    "BACKENDS",
    "ArtifactMetadata",
    "Embedder",
    "ModelUnavailable",
    "file_sha256",
    "load_embedder",
    "load_triton_embedder",
]

logger = logging.getLogger(__name__)

_SUFFIX_BACKEND: dict[str, str] = {
    ".onnx": "onnxruntime",
    ".plan": "tensorrt", ".engine": "tensorrt", ".trt": "tensorrt",
    ".pt": "torch", ".pth": "torch",
}


def load_embedder(path: str | Path, backend: str = "auto", **opts: Any) -> Embedder:
    """Load a model artifact as an :class:`Embedder`.

    ``auto`` chooses by suffix: ``.onnx`` -> ONNX Runtime, except that a TensorRT engine built from
    that same ONNX file (``model.plan`` + ``model.plan.json`` beside ``model.onnx``, whose sidecar's
    ``onnx_sha256`` matches) is preferred when TensorRT and a GPU are usable; ``.plan``/``.engine``
    -> TensorRT; ``.pt``/``.pth`` -> PyTorch (the training checkpoint; needs torch and ``training``).

    Args:
        path: the artifact (``.onnx``, ``.plan``, ``.pt``).
        backend: one of :data:`BACKENDS`.
        **opts: passed to the backend's constructor (e.g. ``providers``, ``intra_op_threads`` for ONNX
            Runtime, ``device_id`` for TensorRT, ``device`` for torch).

    Returns:
        The loaded embedder.

    Raises:
        UserError: unknown backend, missing file, or a backend that does not fit the file or this
            machine; the message names the valid choices.
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown embedder backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "triton":
        raise UserError("backend 'triton' loads no file: give --triton-url (the model is in the Triton server)")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    by_suffix = _SUFFIX_BACKEND.get(suffix)
    if by_suffix is None:
        raise UserError(f"cannot tell the model format of {path.name!r} from its suffix; valid suffixes: "
                        f"{', '.join(_SUFFIX_BACKEND)}")

    if backend == "auto":
        backend = by_suffix
        if by_suffix == "onnxruntime":
            plan = _matching_engine(path)
            if plan is not None:
                from serving.embedders.tensorrt_embedder import TensorRTEmbedder

                logger.info("using TensorRT engine %s built from %s", plan, path.name)
                return TensorRTEmbedder(plan, **opts)
    if backend == "tensorrt" and by_suffix == "onnxruntime":
        # Asked for TensorRT but given the ONNX file: use the engine built from it, if there is one.
        plan = path.with_suffix(".plan")
        if not plan.is_file():
            raise UserError(f"backend 'tensorrt' needs an engine; {plan} does not exist. Build it with "
                            f"`python -m export tensorrt`, or use backend 'onnxruntime'")
        path, by_suffix = plan, "tensorrt"
    if backend != by_suffix:
        raise UserError(f"backend {backend!r} cannot load a {suffix} file ({path.name}); "
                        f"{suffix} files load with backend {by_suffix!r} or 'auto'")

    if backend == "onnxruntime":
        from serving.embedders.onnxruntime_embedder import OnnxRuntimeEmbedder

        return OnnxRuntimeEmbedder(path, **opts)
    if backend == "tensorrt":
        from serving.embedders.tensorrt_embedder import TensorRTEmbedder

        return TensorRTEmbedder(path, **opts)
    from serving.embedders.torch_embedder import TorchEmbedder

    return TorchEmbedder(path, **opts)


def load_triton_embedder(url: str, model_name: str = "xmreid", timeout_s: float = 30.0) -> Embedder:
    """Connect to a model served by Triton (see :mod:`serving.embedders.triton_embedder`).

    Raises:
        UserError: tritonclient missing, Triton unreachable, or the model not ready or not an exported one.
    """
    from serving.embedders.triton_embedder import TritonEmbedder

    return TritonEmbedder(url, model_name, timeout_s=timeout_s)


def _matching_engine(onnx_path: Path) -> Path | None:
    """The TensorRT engine built from ``onnx_path``, when one sits beside it and this machine can run it."""
    plan = onnx_path.with_suffix(".plan")
    if not plan.is_file():
        return None
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        logger.info("found %s but TensorRT is not usable here (%s); using ONNX Runtime", plan.name, reason)
        return None
    try:
        sidecar = read_sidecar(plan)
    except UserError as exc:
        logger.warning("ignoring %s: %s", plan.name, exc)
        return None
    if sidecar.get("onnx_sha256") != file_sha256(onnx_path):
        logger.warning("ignoring %s: it was built from a different ONNX file than %s (stale engine?)",
                       plan.name, onnx_path.name)
        return None
    return plan
