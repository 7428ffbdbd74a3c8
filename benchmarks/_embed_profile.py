"""Where ``benchmarks.embed``'s time goes: FLOPs per image, time per operator type, and the CPU's INT8 GEMM path.

These are the evidence for what bounds the ONNX Runtime / PyTorch and INT8 / fp32 ratios; what the measured
figures show is written up in ``benchmarks/results/embed_limits.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._embed_backends import server_session
from export.models import LoadedModel


def int8_gemm_saturates() -> dict[str, Any]:
    """Whether ONNX Runtime's U8S8 integer GEMM saturates on this CPU.

    x86 CPUs without VNNI run U8S8 through ``VPMADDUBSW``, whose sum of two u8 x s8 products is clamped to
    int16 (ONNX Runtime's quantization docs, "When and why do I need to try U8U8?"); VNNI's ``VPDPBUSD``
    accumulates in int32. ``255 * 127`` pairs tell them apart: exact, or clamped to 32767 per pair.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m, k, n = 16, 64, 16
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k]),
                               helper.make_tensor_value_info("B", TensorProto.INT8, [k, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = int(session.run(None, {"A": np.full((m, k), 255, np.uint8), "B": np.full((k, n), 127, np.int8)})[0][0, 0])
    exact = 255 * 127 * k
    return {"u8s8_saturates": got != exact, "exact": exact, "got": got}


def gflop_per_image(model: torch.nn.Module) -> float:
    """Floating-point operations of one forward pass (2 per multiply-add), from torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros((1, 3, model.height, model.width), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(images)
    return counter.get_total_flops() / 1e9


def _ort_op_times(onnx_path: Path, images: np.ndarray, threads: int, workdir: Path) -> dict[str, float]:
    """Milliseconds per operator type in ONNX Runtime's profile of one warm run (the second of two)."""
    session = server_session(onnx_path, "cpu", threads=threads,
                             profile_prefix=workdir / f"ort-profile-{onnx_path.stem}")
    for _ in range(2):
        session.run(None, {"images": images})
    trace = json.loads(Path(session.end_profiling()).read_text())
    last_run = max(e["ts"] for e in trace if e.get("name") == "model_run")
    per_op: dict[str, float] = {}
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_run:
            per_op[e["args"]["op_name"]] = per_op.get(e["args"]["op_name"], 0.0) + e["dur"] / 1000.0
    return dict(sorted(per_op.items(), key=lambda kv: -kv[1]))


def _shares(times: dict[str, float], top: int) -> dict[str, float]:
    total = sum(times.values()) or 1.0
    return {k: t / total for k, t in list(times.items())[:top]}


def op_breakdown(loaded: LoadedModel, onnx_path: Path, images: np.ndarray, threads: int, workdir: Path,
                 top: int = 6, int8_path: Path | None = None) -> dict[str, Any]:
    """Share of compute time per operator type in each CPU runtime (second, warm run of each).

    This is the evidence for what bounds the ONNX Runtime / PyTorch ratio: what is left once ONNX Runtime
    has fused everything it can is the convolutions, which both runtimes run as fp32 GEMM-like kernels.
    With ``int8_path`` it also profiles the INT8 model and returns ``int8_vs_fp32_ms`` (operator type ->
    ``[fp32 ms, int8 ms]``), the evidence for what bounds the INT8 / fp32 ratio.
    """
    from torch.profiler import profile

    torch.set_num_threads(threads)
    with torch.inference_mode():
        loaded.model(torch.from_numpy(images))
        with profile() as prof:
            loaded.model(torch.from_numpy(images))
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    torch_share = {k: t / total for k, t in sorted(events, key=lambda kv: -kv[1])[:top]}
    fp32_ms = _ort_op_times(onnx_path, images, threads, workdir)
    result: dict[str, Any] = {"pytorch": torch_share, "onnxruntime": _shares(fp32_ms, top)}
    if int8_path is not None:
        int8_ms = _ort_op_times(int8_path, images, threads, workdir)
        result["onnxruntime-int8"] = _shares(int8_ms, top)
        ops = list(dict.fromkeys([*fp32_ms, *int8_ms]))
        result["int8_vs_fp32_ms"] = {op: [round(fp32_ms.get(op, 0.0), 3), round(int8_ms.get(op, 0.0), 3)]
                                     for op in ops}
    return result
