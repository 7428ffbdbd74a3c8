"""ONNX Runtime sessions for the parity checks and benchmarks (CPU, or CUDA when installed)."""

from __future__ import annotations

import logging
from pathlib import Path

from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["PROVIDER_CHOICES", "create_session", "resolve_providers"]

PROVIDER_CHOICES = ("auto", "cpu", "cuda")
_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_providers(provider: str = "auto") -> list[str]:
    """Execution providers for ``provider``: ``auto`` takes CUDA when onnxruntime-gpu offers it.

    Raises:
        UserError: unknown name, or ``cuda`` asked for where the CUDA provider is not installed.
    """
    import onnxruntime as ort

    if provider not in PROVIDER_CHOICES:
        raise UserError(f"unknown provider {provider!r}; valid providers: {', '.join(PROVIDER_CHOICES)}")
    available = ort.get_available_providers()
    if provider == "auto":
        provider = "cuda" if _NAMES["cuda"] in available else "cpu"
    if _NAMES[provider] not in available:
        raise UserError(f"ONNX Runtime here offers {available}, not {_NAMES[provider]} "
                        "(install onnxruntime-gpu from requirements-gpu.txt for CUDA)")
    # CPU last as the fallback for any node the CUDA provider does not implement.
    return [_NAMES[provider]] + ([_NAMES["cpu"]] if provider != "cpu" else [])


def create_session(onnx_path: str | Path, provider: str = "auto", *, intra_op_threads: int = 0,
                   optimized_model_path: str | Path | None = None):
    """An ``InferenceSession`` with every graph optimisation on (ORT folds BatchNorm, fuses Conv+ReLU, ...).

    Args:
        onnx_path: the model file.
        provider: ``auto``, ``cpu`` or ``cuda``.
        intra_op_threads: threads per operator; 0 lets ONNX Runtime use one per physical core.
        optimized_model_path: if given, ONNX Runtime also writes its optimised graph there, so a
            later session can load it and skip the optimisation passes.

    Returns:
        ``onnxruntime.InferenceSession``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads
    options.log_severity_level = 3  # errors only: ORT's per-node warnings are noise here
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    providers = resolve_providers(provider)
    if "CUDAExecutionProvider" in providers and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA / cuDNN from NVIDIA's pip wheels (requirements-gpu.txt), ONNX Runtime >= 1.21
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unreadable / invalid models
        if not Path(onnx_path).is_file():
            raise UserError(f"ONNX model not found: {onnx_path}") from exc
        raise UserError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc
