"""``python -m benchmarks.gpu_check`` (``make gpu-check``): does the GPU path work on this machine?

One command for a bare NVIDIA machine that may have no package registry and only a preinstalled CUDA
PyTorch. Each check reports ``passed``, ``failed: why`` or ``skipped: why``. A check first looks for
the packages it imports (:data:`NEEDS`) and, when some are missing, skips naming all of them by their
pip names; a missing GPU is a skip too, never a crash. On a CPU-only machine the command prints one
line per check and exits 0; it exits 1 only when a check that could run failed. ``docs/gpu.md`` lists
each check's packages with their wheel sizes. Checks (budget: a few minutes on an H100/H200):

* ``train_step``: the paper's DFE (ResNet-50, 384x128, 6 x 256), 50 mixed-precision steps on CUDA on
  synthetic data: every loss finite, the mean of the last 10 below the first 10.
* ``torch_embedder``: torch on CUDA in fp32 and fp16 / bf16 autocast against CPU ONNX Runtime on the
  same weights, per batch size (cosine >= 0.9999 fp32, >= 0.999 fp16/bf16), images/s at batch 1, 8, 64.
* ``onnxruntime_cuda``: ONNX Runtime's CUDA provider against the CPU provider, with images/s.
* ``tensorrt``: fp32 and fp16 engines from ``export.tensorrt_build`` against ONNX Runtime, with
  images/s; then an INT8 engine from ``export.quantize``'s TensorRT QDQ model (calibrated on a small
  synthetic SYSU tree) against ONNX Runtime running that QDQ model (cosine >= 0.99), and vs fp32.
* ``faiss_gpu``: exact and IVF search on the GPU against the CPU (a wheel without kernels for this card,
  "no kernel image is available", is reported as such), exact search ms/query at 1M x 1536 GPU vs CPU.
* ``search_http``: ``/search`` p50 over loopback with the GPU-backed server.

Results go to ``benchmarks/results/gpu_check.{json,md}`` (``--out``) with machine, driver, versions, date.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _machine
from export.tensorrt_build import FP16_MIN_COSINE as LOW_MIN_COSINE
from export.tensorrt_build import FP32_MIN_COSINE

try:
    import numpy as np
except ImportError:  # a bare machine: every check names numpy among the packages it needs, and skips
    np = None

BATCHES = (1, 8, 64)
TRAIN_STEPS = 50
SEARCH_N, SEARCH_DIM = 1_000_000, 1536
OWN_PACKAGES = frozenset({"benchmarks", "export", "index", "serving", "training", "xmreid"})  # missing: broken

#: The pip package of each module a check imports beyond the standard library and this checkout.
PACKAGES = {"torch": "torch (a CUDA build)", "torchvision": "torchvision", "numpy": "numpy", "onnx": "onnx",
            "onnxscript": "onnxscript", "onnxruntime": "onnxruntime-gpu", "cv2": "opencv-python-headless",
            "tqdm": "tqdm", "onnxconverter_common": "onnxconverter-common",
            "tensorrt": "tensorrt-cu12 (NVIDIA's index)", "faiss": "faiss-gpu", "fastapi": "fastapi",
            "uvicorn": "uvicorn", "multipart": "python-multipart", "pydantic_settings": "pydantic-settings",
            "prometheus_client": "prometheus-client", "orjson": "orjson", "yaml": "pyyaml", "httpx": "httpx",
            "fastapi_offline": "fastapi-offline"}
_MODEL, _ONNX = ("torch", "torchvision", "numpy"), ("onnx", "onnxscript", "onnxruntime")
#: The modules each check imports (the model is exported to ONNX with torch wherever ONNX is used).
NEEDS: dict[str, tuple[str, ...]] = {
    "train_step": (*_MODEL, "cv2", "tqdm"),
    "torch_embedder": (*_MODEL, *_ONNX),
    "onnxruntime_cuda": (*_MODEL, *_ONNX),
    "tensorrt": (*_MODEL, *_ONNX, "cv2", "tqdm", "onnxconverter_common", "tensorrt"),
    "faiss_gpu": ("numpy", "faiss"),
    "search_http": (*_MODEL, *_ONNX, "cv2", "faiss", "fastapi", "uvicorn", "multipart", "pydantic_settings",
                    "prometheus_client", "orjson", "yaml", "fastapi_offline", "httpx"),
}
#: Library versions the results record: the defaults plus TensorRT's split packages and the CUDA wheels.
LIBRARIES = (*_machine.DEFAULT_LIBRARIES, "onnx", "onnxscript", "tensorrt-cu12", "tensorrt-cu12-libs",
             "tensorrt-cu12-bindings", "cuda-python", "nvidia-cudnn-cu12", "nvidia-cublas-cu12")


class Skip(Exception):
    """A check that cannot run here; the message is the reason."""


@dataclass
class Result:
    name: str
    status: str = "skipped"
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.name:<17} {self.status}" + (f": {self.reason}" if self.reason else "")


@dataclass
class Context:
    """What the checks share: a work folder, the device, the model size, and the model built once.

    ``device="cpu"`` (``--simulate-on-cpu``) runs the torch-based checks on the CPU with a small model:
    it proves the script's own code on a machine without a GPU, and is what the test suite runs. Its
    numbers say nothing about a GPU and are never written as results.
    """

    workdir: Path
    quick: bool
    device: str = "cuda"
    arch: str = "resnet50"
    height: int = 384
    width: int = 128
    search_n: int = SEARCH_N
    batches: tuple[int, ...] = BATCHES
    cache: dict[str, Any] = field(default_factory=dict)

    def torch_cuda(self) -> Any:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise Skip("no CUDA GPU visible to torch")
        return torch

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch_cuda().cuda.synchronize()

    def model_and_onnx(self) -> tuple[Any, Path]:
        """The paper's DFE with random weights (trained weights time and compare the same) and its ONNX."""
        if "onnx" not in self.cache:
            from export.models import random_model
            from export.onnx_export import export_model

            loaded = random_model(self.arch, height=self.height, width=self.width, parts=6, embed_dim=256)
            path = export_model(loaded, self.workdir / "paper.onnx")
            self.cache["onnx"] = (loaded.model, path)
        return self.cache["onnx"]

    def images(self, n: int) -> np.ndarray:
        return np.random.default_rng(0).integers(0, 256, size=(n, 3, self.height, self.width), dtype=np.uint8)

    def cpu_reference(self, n: int) -> np.ndarray:
        """CPU ONNX Runtime descriptors of the first ``n`` test images (the reference of every backend)."""
        key = f"ref{n}"
        if key not in self.cache:
            import onnxruntime as ort

            _, path = self.model_and_onnx()
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.cache[key] = session.run(None, {"images": self.images(n)})[0]
        return self.cache[key]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def _throughput(fn: Callable[[np.ndarray], Any], images: np.ndarray, sync: Callable[[], None] = lambda: None,
                seconds: float = 2.0) -> float:
    """Images/s of ``fn`` on ``images`` (warm-up, then repeat for about ``seconds``)."""
    fn(images)
    sync()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(images)
        n += 1
    sync()
    return n * len(images) / (time.perf_counter() - start)


def _parity_rows(run: Callable[[np.ndarray], np.ndarray], ctx: Context, threshold: float,
                 sync: Callable[[], None] = lambda: None) -> tuple[list[dict], bool]:
    rows, ok = [], True
    for b in ctx.batches:
        ref = ctx.cpu_reference(max(ctx.batches))[:b]
        got = run(ctx.images(b))
        cos = _cosines(ref, got)
        row = {"batch": b, "min_cosine": float(cos.min()), "threshold": threshold,
               "images_per_s": round(_throughput(run, ctx.images(b), sync, 1.0 if ctx.quick else 2.0), 1)}
        row["passed"] = bool(row["min_cosine"] >= threshold)
        ok &= row["passed"]
        rows.append(row)
    return rows, ok


# ------------------------------------------------------------------------------------------ the checks


def missing_packages(check: str) -> None:
    """Skip ``check`` when any package it imports is missing, naming every missing one by its pip name."""
    missing = [PACKAGES[module] for module in NEEDS[check] if importlib.util.find_spec(module) is None]
    if missing:
        raise Skip(f"needs {', '.join(missing)}, not installed here")


def check_train_step(ctx: Context) -> dict:
    torch = ctx.torch_cuda()
    from training.data import build_dataset
    from training.data.loader import build_train_loader
    from training.data.synthetic import generate
    from training.losses import dfe_loss, resolve_weights
    from training.model import DFE, param_groups

    root = generate(ctx.workdir / "synth", ids=24, images_per_camera=4, show_progress=False)
    train = build_dataset("sysu", root).train
    loader = build_train_loader(train, height=ctx.height, width=ctx.width, batch_pairs=16, mode="sysu", seed=0)
    device = torch.device(ctx.device)
    model = DFE(loader.num_classes, arch=ctx.arch, height=ctx.height, width=ctx.width).to(device).train()
    opt = torch.optim.SGD(param_groups(model, 0.01, 0.1, 5e-4), momentum=0.9)
    amp_dtype = torch.float16 if ctx.device == "cuda" else torch.bfloat16  # CPU autocast: bf16
    scaler = torch.amp.GradScaler(ctx.device, enabled=ctx.device == "cuda")
    weights = resolve_weights("sysu")
    losses, start = [], time.perf_counter()
    while len(losses) < TRAIN_STEPS:
        for rgb, ir, labels in loader:
            rgb, ir, labels = rgb.to(device), ir.to(device), labels.to(device)
            n = rgb.shape[0]
            with torch.autocast(ctx.device, dtype=amp_dtype):
                out = model(torch.cat([rgb, ir]))
                loss, _ = dfe_loss(*out.split(n), labels, weights)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.item()))
            if len(losses) == TRAIN_STEPS:
                break
    seconds = time.perf_counter() - start
    finite = bool(np.isfinite(losses).all())
    first, last = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    passed = finite and last < first
    return {"passed": passed, "reason": "" if passed else f"losses finite={finite}, first10 {first:.3f}, "
                                                          f"last10 {last:.3f}",
            "steps": TRAIN_STEPS, "first10_mean": first, "last10_mean": last, "steps_per_s": TRAIN_STEPS / seconds,
            "amp": str(amp_dtype).removeprefix("torch."), "batch_pairs": 16}


def check_torch_embedder(ctx: Context) -> dict:
    torch = ctx.torch_cuda()
    import copy

    model, _ = ctx.model_and_onnx()
    cuda_model = copy.deepcopy(model).to(ctx.device).eval()
    results, ok = {}, True
    modes = [("fp32", None, FP32_MIN_COSINE), ("fp16", torch.float16, LOW_MIN_COSINE),
             ("bf16", torch.bfloat16, LOW_MIN_COSINE)]
    if ctx.device == "cuda":  # exact fp32: no TF32 in convolutions or matmuls
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = False, False
    else:
        modes = modes[:1] + modes[2:]  # CPU autocast is bf16
    for mode, dtype, threshold in modes:
        def run(images: np.ndarray, dtype=dtype) -> np.ndarray:
            with torch.inference_mode(), torch.autocast(ctx.device, dtype=dtype or torch.float32,
                                                        enabled=dtype is not None):
                return cuda_model(torch.from_numpy(images).to(ctx.device)).float().cpu().numpy()

        rows, passed = _parity_rows(run, ctx, threshold, ctx.sync)
        results[mode] = rows
        ok &= passed
    return {"passed": ok, "reason": "" if ok else "a batch fell below its cosine threshold", "rows": results}


def check_onnxruntime_cuda(ctx: Context) -> dict:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip(f"this onnxruntime ({ort.__version__}) has no CUDA provider (providers: "
                   f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu from requirements-gpu.txt")
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    _, path = ctx.model_and_onnx()
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    if (providers := session.get_providers())[0] != "CUDAExecutionProvider":
        return {"passed": False, "reason": f"the CUDA provider did not load (session providers {providers})"}
    rows, ok = _parity_rows(lambda x: session.run(None, {"images": x})[0], ctx, FP32_MIN_COSINE)
    return {"passed": ok, "reason": "" if ok else "a batch fell below 0.9999 cosine", "rows": rows,
            "onnxruntime": ort.__version__}


def check_tensorrt(ctx: Context) -> dict:
    from export.tensorrt_build import build_engine, tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise Skip(reason)
    import tensorrt as trt

    from export.tensorrt_runtime import TensorRTRunner

    _, path = ctx.model_and_onnx()
    out, ok = {"tensorrt": trt.__version__}, True
    for precision, threshold in (("fp32", FP32_MIN_COSINE), ("fp16", LOW_MIN_COSINE)):
        start = time.perf_counter()
        plan = build_engine(path, ctx.workdir / f"paper.{precision}.plan", fp16=precision == "fp16", min_batch=1,
                            opt_batch=8, max_batch=max(ctx.batches))
        runner = TensorRTRunner(plan)
        rows, passed = _parity_rows(runner, ctx, threshold)
        out[precision] = {"build_s": round(time.perf_counter() - start, 1), "rows": rows}
        ok &= passed
    out["int8"], passed = _tensorrt_int8(ctx, build_engine, TensorRTRunner)
    ok &= passed
    return {"passed": ok, "reason": "" if ok else "an engine fell below its cosine threshold", **out}


def _tensorrt_int8(ctx: Context, build_engine: Callable[..., Path], runner_cls: Callable[[Path], Any],
                   ) -> tuple[dict, bool]:
    """INT8 engine from the TensorRT-target QDQ model: parity with ORT running that model (the same quantized
    arithmetic), and its cosine vs fp32, reported, not gated (random weights say nothing about INT8 accuracy;
    ``python -m export verify`` measures that on a trained model)."""
    import onnxruntime as ort

    from export.quantize import quantize_onnx
    from export.tensorrt_build import INT8_MIN_COSINE
    from training.data.synthetic import generate

    _, path = ctx.model_and_onnx()
    start = time.perf_counter()
    root = generate(ctx.workdir / "synth_int8", ids=12, images_per_camera=4, show_progress=False)
    qdq = quantize_onnx(path, root, ctx.workdir / "paper.int8.onnx", num_images=64, target="tensorrt")
    quantize_s = time.perf_counter() - start
    plan = build_engine(qdq, ctx.workdir / "paper.int8.plan", int8=True, min_batch=1, opt_batch=8,
                        max_batch=max(ctx.batches))
    runner = runner_cls(plan)
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    rows, ok = [], True
    for b in ctx.batches:
        images = ctx.images(b)
        got = runner(images)
        cos = _cosines(session.run(None, {"images": images})[0], got)
        row = {"batch": b, "min_cosine": float(cos.min()), "threshold": INT8_MIN_COSINE,
               "min_cosine_vs_fp32": float(_cosines(ctx.cpu_reference(max(ctx.batches))[:b], got).min()),
               "images_per_s": round(_throughput(runner, images, seconds=1.0 if ctx.quick else 2.0), 1)}
        row["passed"] = bool(row["min_cosine"] >= INT8_MIN_COSINE)
        ok &= row["passed"]
        rows.append(row)
    return {"quantize_s": round(quantize_s, 1), "build_s": round(time.perf_counter() - start - quantize_s, 1),
            "rows": rows}, ok


def check_faiss_gpu(ctx: Context) -> dict:
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        raise Skip(f"this faiss ({faiss.__version__}) has no GPU support or sees no GPU; install faiss-gpu")
    n = min(100_000, ctx.search_n) if ctx.quick else ctx.search_n
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, SEARCH_DIM), dtype=np.float32)
    faiss.normalize_L2(xb)
    xq = xb[rng.choice(n, 64, replace=False)] + 0.05 * rng.standard_normal((64, SEARCH_DIM), dtype=np.float32)
    faiss.normalize_L2(xq)
    res = faiss.StandardGpuResources()
    out: dict[str, Any] = {"n": n, "dim": SEARCH_DIM, "faiss": faiss.__version__}
    cpu = faiss.IndexFlatIP(SEARCH_DIM)
    cpu.add(xb)
    try:
        gpu = faiss.index_cpu_to_gpu(res, 0, cpu)
        d_gpu, i_gpu = gpu.search(xq, 10)
    except RuntimeError as exc:
        if "no kernel image" in str(exc):
            return {"passed": False, "reason": "the faiss wheel has no kernels for this GPU (no kernel image is "
                    "available); the gallery falls back to the CPU", "error": str(exc).splitlines()[0]}
        raise
    d_cpu, i_cpu = cpu.search(xq, 10)
    exact_same = float((i_gpu == i_cpu).mean())
    timings = {}
    for name, index in (("gpu", gpu), ("cpu", cpu)):
        for b in (1, 64):
            q = xq[:b]
            index.search(q, 10)
            start, reps = time.perf_counter(), 0
            while time.perf_counter() - start < 1.0:
                index.search(q, 10)
                reps += 1
            timings[f"exact_{name}_batch{b}_ms_per_query"] = 1000 * (time.perf_counter() - start) / (reps * b)
    ivf_cpu = faiss.IndexIVFFlat(faiss.IndexFlatIP(SEARCH_DIM), SEARCH_DIM, 1024, faiss.METRIC_INNER_PRODUCT)
    ivf_cpu.train(xb[:min(n, 100_000)])
    ivf_cpu.add(xb)
    ivf_cpu.nprobe = 32
    ivf_gpu = faiss.index_cpu_to_gpu(res, 0, ivf_cpu)
    ivf_gpu.nprobe = 32
    _, iv_cpu = ivf_cpu.search(xq, 10)
    _, iv_gpu = ivf_gpu.search(xq, 10)
    ivf_same = float((iv_cpu == iv_gpu).mean())
    ok = exact_same >= 0.99 and float(np.abs(d_gpu - d_cpu).max()) < 1e-3 and ivf_same >= 0.95
    return {"passed": ok, "reason": "" if ok else f"GPU and CPU results differ (exact ids {exact_same:.3f}, "
            f"IVF ids {ivf_same:.3f})", "exact_id_agreement": exact_same, "ivf_id_agreement": ivf_same,
            "max_score_diff": float(np.abs(d_gpu - d_cpu).max()), **out, **timings}


def check_search_http(ctx: Context) -> dict:
    ctx.torch_cuda()
    import httpx

    from benchmarks._server import ServerProcess
    from index import Gallery

    model, onnx_path = ctx.model_and_onnx()
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" in ort.get_available_providers() or ctx.device == "cpu":
        artifact, backend = onnx_path, "onnxruntime"
    else:  # no onnxruntime-gpu here: the torch embedder on CUDA is the GPU backend that can run
        artifact, backend = ctx.workdir / "paper.pt", "torch"
        torch.save({"model": model.state_dict(), "model_config": model.model_config()}, artifact)
    from serving.embedders import load_embedder

    embedder = load_embedder(artifact, backend=backend)
    gallery_dir = ctx.workdir / "gallery"
    gallery = Gallery.create(embedder.dim, fingerprint=embedder.fingerprint)
    feats = np.random.default_rng(1).standard_normal((1000, embedder.dim), dtype=np.float32)
    gallery.add(feats, [{"camera": 1, "person_label": i} for i in range(1000)])
    gallery.save(gallery_dir)
    del embedder
    import cv2

    _ok_enc, jpeg = cv2.imencode(".jpg", np.random.default_rng(2).integers(0, 256, (384, 128, 3), dtype=np.uint8))
    with ServerProcess(artifact, gallery_dir, ["--backend", backend]) as server, httpx.Client(timeout=60) as client:
        samples = []
        for i in range(60):
            start = time.perf_counter()
            r = client.post(f"{server.url}/search?top_k=10", files={"image": ("q.jpg", jpeg.tobytes(), "image/jpeg")})
            r.raise_for_status()
            if i >= 10:
                samples.append(time.perf_counter() - start)
        model = r.json()["model"]
    return {"passed": True, "reason": "", "p50_ms": 1000 * float(np.median(samples)), "backend": model.get("name"),
            "requests": len(samples)}


CHECKS: dict[str, Callable[[Context], dict]] = {
    "train_step": check_train_step, "torch_embedder": check_torch_embedder, "onnxruntime_cuda": check_onnxruntime_cuda,
    "tensorrt": check_tensorrt, "faiss_gpu": check_faiss_gpu, "search_http": check_search_http}


def run_checks(names: list[str], ctx: Context) -> list[Result]:
    results = []
    for name in names:
        result, start = Result(name), time.perf_counter()
        try:
            missing_packages(name)
            details = CHECKS[name](ctx)
            result.status = "passed" if details.pop("passed") else "failed"
            result.reason = details.pop("reason", "")
            result.details = details
        except Skip as exc:
            result.status, result.reason = "skipped", str(exc)
        except Exception as exc:  # a check that could run and broke
            if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] not in OWN_PACKAGES:
                result.status, result.reason = "skipped", f"needs the {exc.name} module, not installed here"
            else:  # report it with its traceback and go on with the other checks
                result.status = "failed"
                result.reason = f"{type(exc).__name__}: {(str(exc).strip() or ' ').splitlines()[0]}".strip()
                result.details = {"traceback": traceback.format_exc(limit=5)}
        result.seconds = round(time.perf_counter() - start, 1)
        print(result.line(), flush=True)
        results.append(result)
    return results


def _markdown(results: list[Result]) -> str:
    lines = ["| check | status | reason / figures | seconds |", "|---|---|---|---:|"]
    for r in results:
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.details.items()
                            if not isinstance(v, (dict, list)) and k != "traceback")
        lines.append(f"| {r.name} | {r.status} | {r.reason or figures} | {r.seconds} |")
    for r in results:
        for key, value in r.details.items():
            rows = value.get("rows") if isinstance(value, dict) else value if key == "rows" else None
            if isinstance(value, dict) and "rows" not in value and all(isinstance(v, list) for v in value.values()):
                for mode, mode_rows in value.items():
                    lines += ["", f"**{r.name} {mode}**", "", _machine.markdown_table(mode_rows)]
            elif isinstance(rows, list) and rows:
                lines += ["", f"**{r.name} {key}**", "", _machine.markdown_table(rows)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma list out of {', '.join(CHECKS)}")
    p.add_argument("--quick", action="store_true", help="shorter timings and a 100k search gallery")
    p.add_argument("--out", default="gpu_check", help="results name under benchmarks/results/ ('' = do not write)")
    p.add_argument("--simulate-on-cpu", action="store_true",
                   help="run the torch checks on the CPU with a small model to test this script (writes no results)")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in names if c not in CHECKS]
    if unknown or not names:
        print(f"--checks {args.checks!r}: valid checks are {', '.join(CHECKS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(Path(tmp), args.quick)
        if args.simulate_on_cpu:  # batches 1 and 8: a CPU without native bfloat16 emulates the bf16 rows, slowly
            ctx = Context(Path(tmp), True, device="cpu", arch="resnet18", height=96, width=32, search_n=20_000,
                          batches=(1, 8))
        results = run_checks(names, ctx)
    if args.out and not args.simulate_on_cpu:
        payload = {"checks": [r.__dict__ for r in results]}
        _machine.write_results(args.out, payload, _markdown(results), machine=_machine.describe_machine(LIBRARIES))
    failed = [r.name for r in results if r.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
