"""``benchmarks.embed``'s presentation: the Markdown report with the owner's targets, and the plot.

The targets are checked and reported as met or not, never asserted.
"""

from __future__ import annotations

from typing import Any

from benchmarks import _machine
from benchmarks._embed_backends import BASELINE, FP32_ORT, INT8_BACKEND

# Owner's throughput target (images/s ratio over PyTorch eager at the same batch), per device and model.
TARGETS: dict[str, dict[str, float]] = {"onnxruntime-cpu": {"paper": 2.5}}
# INT8 over fp32 ONNX Runtime (images/s at batch 8, same threads, same run), per model.
INT8_TARGETS: dict[str, dict[str, float]] = {INT8_BACKEND: {"paper": 1.5}}
INT8_TARGET_BATCH = 8
LIMITS_NOTE = "embed_limits.md"  # what limits the ratios, beside the results in benchmarks/results/


def _target_lines(results: dict[str, Any], targets: dict[str, dict[str, float]], column: str, *,
                  against: str = "", batch: int | None = None, cosine: bool = False) -> list[str]:
    """One line per row that a target applies to: the measured ratio (``column``), the target, met or not."""
    lines = []
    for backend, per_model in targets.items():
        for name, target in per_model.items():
            for row in results["models"].get(name, {}).get("rows", []):
                if row["backend"] != backend or column not in row or batch not in (None, row["batch"]):
                    continue
                ratio = row[column]
                extra = f"; cosine vs fp32 min {row.get('cos_min', float('nan')):.4f}" if cosine else ""
                lines.append(f"- {backend} on {name}, {row['threads']} threads, batch {row['batch']}: {ratio:.2f}x"
                             f"{against} (target {target}x: {'met' if ratio >= target else 'not met'}{extra})")
    return lines


def _int8_verdicts(results: dict[str, Any]) -> list[str]:
    """INT8 over fp32 ONNX Runtime at :data:`INT8_TARGET_BATCH`, with the INT8 descriptors' worst cosine."""
    return _target_lines(results, INT8_TARGETS, "speedup_vs_onnxruntime_cpu", against=" fp32 ONNX Runtime",
                         batch=INT8_TARGET_BATCH, cosine=True)


def _int8_table(ob: dict[str, Any], top: int = 12) -> str:
    """Operator types by fp32 + INT8 time, with the INT8 / fp32 ratio of the whole run."""
    ms = ob["int8_vs_fp32_ms"]
    fp32_total, int8_total = sum(v[0] for v in ms.values()), sum(v[1] for v in ms.values())
    rows = [{"op_type": op, "fp32_ms": v[0], "int8_ms": v[1],
             "fp32_share": v[0] / (fp32_total or 1.0), "int8_share": v[1] / (int8_total or 1.0)}
            for op, v in sorted(ms.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))[:top]]
    rows.append({"op_type": "total", "fp32_ms": fp32_total, "int8_ms": int8_total, "fp32_share": 1.0,
                 "int8_share": 1.0})
    return _machine.markdown_table(rows, ["op_type", "fp32_ms", "int8_ms", "fp32_share", "int8_share"])


def report(results: dict[str, Any]) -> str:
    """The Markdown body: one table per model, the target verdicts, and what limits the ratios."""
    parts = [(f"Host-to-host throughput with {results['threads']} CPU threads (all CPU backends get the same count); "
             f"interleaved rounds on the same random uint8 images. Speed-up = images/s over `{BASELINE}` (and over "
             f"`{FP32_ORT}`) at the same batch and thread count. `cos_*` = cosine of the backend's descriptors "
             f"against `{FP32_ORT}` on real held-out crops of both modalities (min / 1st percentile / median).")]
    probe = results.get("int8_gemm")
    if probe:
        parts.append("ONNX Runtime's U8S8 integer GEMM on this CPU: " + (
            f"saturates ({probe['got']} for an exact {probe['exact']}: the VPMADDUBSW path of x86 without VNNI)"
            if probe["u8s8_saturates"] else f"exact ({probe['got']}), i.e. VNNI kernels"))
    columns = ["backend", "threads", "batch", "images_per_s", "ms_per_image_p50", "ms_per_image_p95",
               "speedup_vs_pytorch_eager_cpu", "speedup_vs_onnxruntime_cpu", "cos_min", "cos_p1", "cos_median",
               "gflop_per_s", "rounds"]
    for name, model in results["models"].items():
        info = model["info"]
        parts.append(f"## {name}: {info['arch']} {info['height']}x{info['width']} -> {info['descriptor_dim']} "
                     f"({info['source']}; {info['gflop_per_image']:.2f} GFLOP/image)")
        # Cosines near 1 need more than the table's 3 significant digits.
        shown = [{**row, **{k: f"{row[k]:.5f}" for k in ("cos_min", "cos_p1", "cos_median") if k in row}}
                 for row in model["rows"]]
        parts.append(_machine.markdown_table(shown, columns))
        if "int8_quantization" in info:
            q = info["int8_quantization"]
            parts.append(f"INT8: `python -m export quantize` defaults ({q['method']}, {q['types']}, per-channel "
                         f"{q['per_channel']}, reduce-range {q['reduce_range']}), {q['calibration_images']} "
                         f"calibration crops from {q['calibration_source']} ({info['int8_quantize_s']:.0f} s).")
        cosines = ", ".join(f"batch {b}: " + ", ".join(f"{k} {v:.6f}" for k, v in c.items())
                            for b, c in model["parity_min_cosine"].items())
        parts.append(f"Parity on the random timing images (min cosine vs the first backend; INT8 was calibrated on "
                     f"real crops, so the `cos_*` columns are its accuracy): {cosines}.")
        if "op_breakdown" in model:
            ob = model["op_breakdown"]
            runtimes = [r for r in ("pytorch", "onnxruntime", "onnxruntime-int8") if r in ob]
            shares = "; ".join(f"{runtime}: " + ", ".join(f"{op} {share:.1%}" for op, share in ob[runtime].items())
                               for runtime in runtimes)
            parts.append(f"Time per operator type (batch {ob['batch']}, {ob['threads']} thread(s)): {shares}.")
            if "int8_vs_fp32_ms" in ob:
                parts.append(f"INT8 vs fp32 ONNX Runtime, ms per operator type (batch {ob['batch']}, "
                             f"{ob['threads']} thread(s), one warm run each):\n\n{_int8_table(ob)}")
    verdicts = _target_lines(results, TARGETS, "speedup_vs_pytorch_eager_cpu") + _int8_verdicts(results)
    if verdicts:
        parts.append("## Target\n\n" + "\n".join(verdicts))
    parts.append(f"What limits these ratios (operator breakdown, INT8 kernels, thread contention): "
                 f"`benchmarks/results/{LIMITS_NOTE}`.")
    return "\n\n".join(parts)


def plot(results: dict[str, Any]) -> Any:
    """Images/s per backend and batch size, one panel per model."""
    plt = _machine.pyplot()
    models = results["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        label = lambda r: r["backend"] + (f" ({r['threads']} thr)" if r["threads"] else "")  # noqa: E731
        backends = list(dict.fromkeys(label(r) for r in model["rows"]))
        sizes = sorted({r["batch"] for r in model["rows"]})
        width = 0.8 / len(backends)
        for i, backend in enumerate(backends):
            values = {r["batch"]: r["images_per_s"] for r in model["rows"] if label(r) == backend}
            xs = [j + i * width for j, s in enumerate(sizes) if s in values]
            ax.bar(xs, [values[s] for s in sizes if s in values], width=width, label=backend)
        ax.set_xticks([j + width * (len(backends) - 1) / 2 for j in range(len(sizes))], [str(s) for s in sizes])
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{name}: {model['info']['arch']} {model['info']['height']}x{model['info']['width']}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
