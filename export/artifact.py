"""The artifact contract: the one reader and writer of what an exported model says about itself.

``python -m export onnx`` writes metadata properties into the ONNX file; ``python -m export tensorrt``
copies them into a JSON sidecar beside the engine, which has no room for them. Every reader (the
exporter's own checks, the Triton writer, the TensorRT builder, serving's embedders) parses them here,
so the keys, their types and the sidecar's format exist once (ARCHITECTURE.md §2, docs/contracts.md
"ONNX artifact").

Why it lives in ``export/`` and why that is safe for serving: this module imports neither torch nor
``training`` (only the foundation, :mod:`xmreid`) (``export/__init__.py`` is empty, so importing
``export.artifact`` runs nothing else of the package), and ``onnx`` / ``tensorrt`` are imported inside the
functions that need them. A serving image carries ``export/`` as files but never imports its torch half;
``tests/export/test_artifact.py`` checks that in a fresh interpreter.

Two strictness levels, both here: :func:`typed_metadata` needs every key the exporter writes (export-side
tools compare and rewrite models, so a partial one is a mistake), while
:meth:`ArtifactMetadata.from_strings` needs only what a runtime cannot run without (input size and
descriptor size), so a hand-made ONNX file with minimal metadata still serves.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmreid.atomic import atomic_write_bytes
from xmreid.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "INT_KEYS",
    "METADATA_KEYS",
    "OUTPUT_NAME",
    "RUNTIME_KEYS",
    "SIDECAR_FORMAT",
    "STR_KEYS",
    "ArtifactMetadata",
    "batch_dim_is_dynamic",
    "config_digest",
    "cuda_runtime",
    "file_sha256",
    "load_onnx_proto",
    "metadata_from_proto",
    "read_metadata",
    "read_sidecar",
    "sidecar_path",
    "tensorrt_unavailable_reason",
    "typed_metadata",
    "write_sidecar",
]

INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"

# Keys whose values are integers once read back; every other key is a string.
INT_KEYS: tuple[str, ...] = ("height", "width", "parts", "embed_dim", "descriptor_dim")
STR_KEYS: tuple[str, ...] = ("channel_order", "layout", "input_dtype", "arch", "config_digest", "exporter_version")
#: Every key ``python -m export onnx`` writes (an INT8 model adds ``precision`` and ``parent_fingerprint``).
METADATA_KEYS: tuple[str, ...] = INT_KEYS + STR_KEYS
#: What a runtime cannot run without: the input size and the descriptor size.
RUNTIME_KEYS: tuple[str, ...] = ("height", "width", "descriptor_dim")
# Values the serving side produces; a model that wants another input is refused rather than fed garbage.
_SUPPORTED = {"channel_order": ("RGB",), "layout": ("NCHW",), "input_dtype": ("float32", "uint8")}

# The engine file has no room for free-form metadata, so the ONNX metadata travels in a JSON file next to it.
SIDECAR_FORMAT = "xmreid-tensorrt-sidecar/1"


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, streamed so a large engine does not have to fit in memory twice.

    Args:
        path: the artifact file.
        chunk_size: bytes read per step.

    Returns:
        The 64-character lowercase hex digest: the model fingerprint a gallery is tied to.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_digest(config: Mapping[str, Any] | None, model_config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a checkpoint's training config and model config.

    Canonical means sorted keys, no whitespace and ASCII only, so the digest depends on the values and
    not on dict order or on the machine that wrote it. Non-JSON values (paths) are written as ``str``.

    Args:
        config: the checkpoint's ``config`` (resolved training arguments), or ``None`` for a model that
            was never trained (random weights for benchmarks).
        model_config: the checkpoint's ``model_config`` (``DFE.model_config()``).

    Returns:
        64 lowercase hex digits.
    """
    payload = {"config": dict(config) if config is not None else None, "model_config": dict(model_config)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _positive_int(props: Mapping[str, Any], key: str, source: str) -> int:
    try:
        value = int(str(props[key]))
    except ValueError:
        raise UserError(f"{source}: metadata {key}={props[key]!r} is not an integer") from None
    if value < 1:
        raise UserError(f"{source}: metadata {key}={value} must be >= 1")
    return value


def typed_metadata(raw: Mapping[str, Any], source: str = "model") -> dict[str, Any]:
    """Check a complete set of export metadata and type its integers (the export-side reading).

    Args:
        raw: metadata key -> string value, as in ``metadata_props`` or a sidecar's ``metadata``.
        source: the artifact's name, used in error messages.

    Returns:
        Every key of ``raw``, with the :data:`INT_KEYS` as ``int`` (unknown extra keys stay strings).

    Raises:
        UserError: a key of :data:`METADATA_KEYS` is missing, an integer does not parse or is < 1, or
            ``descriptor_dim`` is not ``parts * embed_dim``.
    """
    missing = [key for key in METADATA_KEYS if key not in raw]
    if missing:
        raise UserError(
            f"{source} lacks the export metadata {missing} (found {sorted(raw)}); "
            "re-export it with `python -m export onnx --checkpoint CKPT --out model.onnx`"
        )
    meta: dict[str, Any] = dict(raw)
    for key in INT_KEYS:
        meta[key] = _positive_int(raw, key, source)
    if meta["descriptor_dim"] != meta["parts"] * meta["embed_dim"]:
        raise UserError(
            f"{source}: metadata descriptor_dim={meta['descriptor_dim']} is not parts*embed_dim="
            f"{meta['parts']}*{meta['embed_dim']}"
        )
    return meta


@dataclass(frozen=True)
class ArtifactMetadata:
    """What an exported artifact says about itself, as a runtime reads it (ONNX metadata or TensorRT sidecar).

    H, W and the descriptor size are read from the artifact, never typed twice (ARCHITECTURE §2).

    Attributes:
        height: model input height in pixels.
        width: model input width in pixels.
        descriptor_dim: length of one descriptor (K·embed_dim).
        parts: number of horizontal parts K, when recorded.
        embed_dim: per-part embedding size, when recorded.
        arch: backbone name, when recorded.
        raw: every metadata string as found (for ``/model`` style reporting).
    """

    height: int
    width: int
    descriptor_dim: int
    parts: int | None = None
    embed_dim: int | None = None
    arch: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_strings(cls, props: Mapping[str, Any], source: str) -> ArtifactMetadata:
        """Parse and check the exporter's metadata properties (only :data:`RUNTIME_KEYS` required).

        Args:
            props: metadata key -> value (strings in ONNX; JSON values in the TensorRT sidecar).
            source: the artifact's name, used in error messages.

        Returns:
            The parsed metadata.

        Raises:
            UserError: a required key is missing, a number does not parse, or the artifact expects an
                input this runtime does not produce (not RGB, not NCHW, not uint8/float).
        """
        missing = [k for k in RUNTIME_KEYS if k not in props]
        if missing:
            raise UserError(
                f"{source}: metadata lacks {', '.join(missing)} (found keys: {', '.join(sorted(props)) or 'none'}); "
                "re-export the model with `python -m export onnx` so the embedder can read its input size "
                "and descriptor size")
        for key, valid in _SUPPORTED.items():
            if key in props and str(props[key]) not in valid:
                raise UserError(f"{source}: metadata {key}={props[key]!r} is not supported; "
                                f"valid values: {', '.join(valid)}")
        ints = {key: _positive_int(props, key, source) if key in props else None for key in INT_KEYS}
        return cls(
            height=ints["height"], width=ints["width"], descriptor_dim=ints["descriptor_dim"],
            parts=ints["parts"], embed_dim=ints["embed_dim"],
            arch=str(props["arch"]) if "arch" in props else None,
            raw={str(k): str(v) for k, v in props.items()},
        )


def load_onnx_proto(path: str | Path) -> Any:
    """Load an ONNX file into a ``ModelProto``, turning "wrong file" into a :class:`UserError`."""
    import onnx  # imported here: the contract must stay importable where onnx is not installed

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        raise UserError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc


def metadata_from_proto(proto: Any, source: str = "model") -> dict[str, Any]:
    """Typed metadata from a ``ModelProto``'s ``metadata_props`` (see :func:`typed_metadata`)."""
    return typed_metadata({prop.key: prop.value for prop in proto.metadata_props}, source=source)


def read_metadata(onnx_path: str | Path) -> dict[str, Any]:
    """Read the export metadata of an ONNX model with typed values.

    Args:
        onnx_path: a model written by :func:`export.onnx_export.export_onnx`.

    Returns:
        ``{"height": int, "width": int, "parts": int, "embed_dim": int, "descriptor_dim": int,
        "channel_order": "RGB", "layout": "NCHW", "input_dtype": "uint8", "arch": str,
        "config_digest": str, "exporter_version": str}`` plus any extra properties as strings.

    Raises:
        UserError: the file is missing, is not ONNX, or lacks / garbles a required property.
    """
    return metadata_from_proto(load_onnx_proto(onnx_path), source=str(onnx_path))


def batch_dim_is_dynamic(proto: Any) -> bool:
    """Whether the first axis of the model's ``images`` input is symbolic (a dynamic batch)."""
    for value in proto.graph.input:
        if value.name == INPUT_NAME:
            dims = value.type.tensor_type.shape.dim
            return bool(dims) and not dims[0].HasField("dim_value")
    raise UserError(f"model has no input named {INPUT_NAME!r} (inputs: {[v.name for v in proto.graph.input]})")


# -- the TensorRT sidecar ----------------------------------------------------------------------------------
#
#     {
#       "format": "xmreid-tensorrt-sidecar/1",
#       "metadata": {"height": "96", "width": "32", "descriptor_dim": "1536", "...": "every ONNX metadata_prop"},
#       "onnx_sha256": "<sha256 of the ONNX file the engine was built from>",
#       "plan_sha256": "<sha256 of the .plan file>",            (optional for readers; checked when present)
#       "precision": "fp16",                                    (optional; informational)
#       "min_batch": 1, "opt_batch": 8, "max_batch": 64,        (optional; the profile is read from the engine)
#       "tensorrt_version": "10.3.0"                            (optional; informational)
#     }
#
# ``onnx_sha256`` is the fingerprint serving records in a gallery: an engine is a compiled form of one ONNX
# model, so a gallery indexed with ONNX Runtime stays valid when the same model is served through TensorRT.


def sidecar_path(plan: str | Path) -> Path:
    """Where the sidecar of ``plan`` lives: the plan's full name plus ``.json`` (``model.plan.json``)."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def write_sidecar(plan: str | Path, onnx_path: str | Path, *, precision: str, min_batch: int, opt_batch: int,
                  max_batch: int, tensorrt_version: str) -> Path:
    """Write ``<plan>.json`` atomically: the ONNX metadata, both files' sha256, the precision and batch profile.

    Returns:
        The sidecar's path.

    Raises:
        UserError: the ONNX model lacks its export metadata.
    """
    meta = read_metadata(onnx_path)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "metadata": {key: str(value) for key, value in meta.items()},
        "onnx_sha256": file_sha256(onnx_path),
        "plan_sha256": file_sha256(plan),
        "precision": precision,
        "min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
        "tensorrt_version": tensorrt_version,
    }
    return atomic_write_bytes(sidecar_path(plan), (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))


def read_sidecar(plan: str | Path) -> dict[str, Any]:
    """Read and check the sidecar of an engine (format above).

    Raises:
        UserError: missing file, bad JSON, or missing ``metadata`` / ``onnx_sha256``.
    """
    path = sidecar_path(plan)
    if not path.is_file():
        raise UserError(f"TensorRT engine {Path(plan).name} has no sidecar {path.name}; the engine alone does "
                        "not say its input size or model fingerprint. Rebuild it with `python -m export tensorrt`")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from exc
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("metadata"), dict) \
            or not isinstance(sidecar.get("onnx_sha256"), str):
        raise UserError(f"{path}: expected a JSON object with 'metadata' (object) and 'onnx_sha256' (string)")
    return sidecar


def tensorrt_unavailable_reason(*, runtime: bool = True,
                                device_count: Callable[[], int] | None = None) -> str | None:
    """Why TensorRT cannot be used here, as a clause for a log or an error message; ``None`` when it can.

    Args:
        runtime: also require cuda-python, which serving's TensorRT embedder allocates device memory with.
            The engine builder does not need it (it may count GPUs through torch in the training env), so
            it passes False.
        device_count: how to count CUDA devices when cuda-python is absent (the builder passes torch's);
            without it, no cuda-python means no visible device. Serving never imports torch.

    Returns:
        ``None``, or a clause without a final full stop, e.g. ``"TensorRT is not installed here (...)"``.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return "TensorRT is not installed here (it comes from NVIDIA's package index: see docs/gpu.md)"
    version = str(getattr(trt, "__version__", "0"))
    if int(version.split(".")[0]) < 10:
        return f"TensorRT {version} is too old (10.x or 11.x is supported)"
    try:
        cudart = cuda_runtime()
    except ImportError:
        if runtime:
            return "TensorRT is installed but cuda-python is not (pip install cuda-python)"
        cudart = None
    if _cuda_device_count(cudart, device_count) < 1:
        return "TensorRT is installed but no CUDA GPU is visible"
    return None


def cuda_runtime() -> Any:
    """The CUDA runtime bindings of cuda-python (the module path changed in cuda-python 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def _cuda_device_count(cudart: Any, fallback: Callable[[], int] | None) -> int:
    """Visible CUDA devices, through cuda-python, else through the caller's counter."""
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        return int(count) if err == cudart.cudaError_t.cudaSuccess else 0
    return fallback() if fallback is not None else 0
