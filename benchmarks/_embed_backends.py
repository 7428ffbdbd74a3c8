"""The ways ``benchmarks.embed`` runs a model, host to host, and the interleaved timing loop that compares them.

Every backend maps the same uint8 ``[B, 3, H, W]`` NumPy batch to float32 ``[B, D]`` descriptors in NumPy, so
the copies to and from a device are part of what is timed. The ONNX Runtime backends use the server
embedder's ``SessionOptions``, so the benchmark times what serves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.models import LoadedModel
from export.ort import resolve_providers
from xmreid.errors import UserError

BASELINE = "pytorch-eager-cpu"
FP32_ORT = "onnxruntime-cpu"
INT8_BACKEND = "onnxruntime-int8-cpu"


@dataclass
class Backend:
    """One way to run a model: ``run`` maps uint8 ``[B, 3, H, W]`` to float32 ``[B, D]`` (host to host)."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    max_batch: int | None = None
    threads: int | None = None  # CPU threads (None: a GPU backend)

    @property
    def key(self) -> str:
        return self.name if self.threads is None else f"{self.name}/{self.threads}t"


def server_session(onnx_path: Path, provider: str = "cpu", *, threads: int | None = None,
                   optimized_model_path: Path | None = None, profile_prefix: Path | None = None) -> Any:
    """An ``InferenceSession`` with the server embedder's ``SessionOptions``, so the benchmark times what serves.

    Args:
        onnx_path: the model.
        provider: ``cpu`` or ``cuda`` (see :func:`export.ort.resolve_providers`).
        threads: intra-op threads (default: the cores this process may use, as in the server).
        optimized_model_path: also write ONNX Runtime's optimised graph there (start-up only).
        profile_prefix: switch on ONNX Runtime's profiler, writing ``<prefix>_<date>.json``.

    Raises:
        UserError: the provider is not installed, or ONNX Runtime cannot load the model.
    """
    import onnxruntime as ort

    from serving.embedders.onnxruntime_embedder import preload_cuda_libraries, session_options

    providers = resolve_providers(provider)
    options = session_options(intra_op_threads=threads)
    options.log_severity_level = 3  # errors only: ORT's per-node warnings are noise here
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if "CUDAExecutionProvider" in providers:
        preload_cuda_libraries(ort)
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types for unreadable / invalid models
        raise UserError(f"ONNX Runtime cannot load {onnx_path}: {exc}") from exc


def _ort_backend(name: str, onnx_path: Path, threads: int, info: dict[str, Any]) -> Backend:
    """An ONNX Runtime CPU backend loaded from the optimised graph ONNX Runtime saved for it."""
    optimized = onnx_path.with_suffix(f".ort-optimized-{threads}.onnx")
    key = "ort" if name == FP32_ORT else "ort_int8"
    start = time.perf_counter()
    server_session(onnx_path, "cpu", threads=threads, optimized_model_path=optimized)
    info[f"{key}_session_init_s_threads{threads}"] = time.perf_counter() - start
    start = time.perf_counter()
    session = server_session(optimized, "cpu", threads=threads)
    info[f"{key}_optimized_session_init_s_threads{threads}"] = time.perf_counter() - start

    def ort_run(images: np.ndarray) -> np.ndarray:
        return session.run(None, {"images": images})[0]

    return Backend(name, ort_run, threads=threads)


def cpu_backends(loaded: LoadedModel, onnx_path: Path, threads: int, info: dict[str, Any],
                 int8_path: Path | None = None) -> list[Backend]:
    """PyTorch eager, ONNX Runtime fp32 and (given ``int8_path``) INT8 on the CPU with the same thread count."""
    model = loaded.model.eval()

    def torch_run(images: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)  # global in torch: set per call since thread counts are interleaved
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()

    backends = [Backend(BASELINE, torch_run, threads=threads), _ort_backend(FP32_ORT, onnx_path, threads, info)]
    if int8_path is not None:
        backends.append(_ort_backend(INT8_BACKEND, int8_path, threads, info))
    return backends


def gpu_backends(loaded: LoadedModel, onnx_path: Path, max_batch: int, info: dict[str, Any]) -> list[Backend]:
    """CUDA backends that are installed here (none without a CUDA GPU)."""
    if not torch.cuda.is_available():
        return []
    import copy

    backends = []
    cuda_model = copy.deepcopy(loaded.model).cuda().eval()

    def torch_cuda(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return cuda_model(torch.from_numpy(images).cuda()).cpu().numpy()

    backends.append(Backend("pytorch-eager-cuda", torch_cuda))
    try:
        session = server_session(onnx_path, "cuda")
        backends.append(Backend("onnxruntime-cuda", lambda images: session.run(None, {"images": images})[0]))
    except UserError as exc:
        info["onnxruntime_cuda"] = str(exc)
    from export.tensorrt_build import build_engine, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is None:
        from export.tensorrt_runtime import TensorRTRunner

        start = time.perf_counter()
        plan = build_engine(onnx_path, onnx_path.with_suffix(".fp16.plan"), fp16=True, min_batch=1,
                            opt_batch=min(8, max_batch), max_batch=max_batch)
        info["tensorrt_build_s"] = time.perf_counter() - start
        backends.append(Backend("tensorrt-fp16", TensorRTRunner(plan), max_batch=max_batch))
    else:
        info["tensorrt"] = reason
    return backends


def measure(backends: list[Backend], images: np.ndarray, *, warmup: int, max_rounds: int, budget_s: float,
            ) -> dict[str, list[float]]:
    """Interleaved timing: every round runs each backend once, in a rotating order.

    The round count is what the slowest backend fits in ``budget_s`` (at least 3, at most ``max_rounds``),
    estimated from the warm-up calls.
    """
    slowest = 0.0
    for backend in backends:
        for _ in range(warmup):
            start = time.perf_counter()
            backend.run(images)
            slowest = max(slowest, time.perf_counter() - start)
    rounds = max(3, min(max_rounds, math.floor(budget_s / max(slowest, 1e-9))))
    samples: dict[str, list[float]] = {b.key: [] for b in backends}
    for r in range(rounds):
        for i in range(len(backends)):
            backend = backends[(r + i) % len(backends)]
            start = time.perf_counter()
            backend.run(images)
            samples[backend.key].append(time.perf_counter() - start)
    return samples
