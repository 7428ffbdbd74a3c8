"""The metadata an exported ONNX model carries, written once here and read back everywhere.

The embedders, the Triton writer and the TensorRT builder learn the input size, the part count and
the descriptor size from these properties instead of from a second copy typed on a command line
(ARCHITECTURE.md §2, docs/contracts.md "ONNX artifact"). This module imports neither torch nor
``training`` so that code which only *reads* a model (``python -m export triton``, serving) stays light.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "INT_KEYS",
    "METADATA_KEYS",
    "OUTPUT_NAME",
    "batch_dim_is_dynamic",
    "config_digest",
    "load_onnx_proto",
    "metadata_from_proto",
    "read_metadata",
]

INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"

# Keys whose values are integers once read back; every other key is a string.
INT_KEYS: tuple[str, ...] = ("height", "width", "parts", "embed_dim", "descriptor_dim")
STR_KEYS: tuple[str, ...] = ("channel_order", "layout", "input_dtype", "arch", "config_digest", "exporter_version")
METADATA_KEYS: tuple[str, ...] = INT_KEYS + STR_KEYS


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


def load_onnx_proto(path: str | Path) -> Any:
    """Load an ONNX file into a ``ModelProto``, turning "wrong file" into a :class:`UserError`."""
    import onnx  # imported here: the package must stay importable where onnx is not installed

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / ValueError / OSError depending on the damage
        raise UserError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc


def metadata_from_proto(proto: Any, source: str = "model") -> dict[str, Any]:
    """Typed metadata from a ``ModelProto``'s ``metadata_props`` (see :func:`read_metadata`)."""
    raw = {prop.key: prop.value for prop in proto.metadata_props}
    missing = [key for key in METADATA_KEYS if key not in raw]
    if missing:
        raise UserError(
            f"{source} lacks the export metadata {missing} (found {sorted(raw)}); "
            "re-export it with `python -m export onnx --checkpoint CKPT --out model.onnx`"
        )
    meta: dict[str, Any] = dict(raw)  # unknown extra keys are kept as strings
    for key in INT_KEYS:
        try:
            meta[key] = int(raw[key])
        except ValueError:
            raise UserError(f"{source}: metadata {key}={raw[key]!r} is not an integer") from None
        if meta[key] < 1:
            raise UserError(f"{source}: metadata {key}={meta[key]} must be >= 1")
    if meta["descriptor_dim"] != meta["parts"] * meta["embed_dim"]:
        raise UserError(
            f"{source}: metadata descriptor_dim={meta['descriptor_dim']} is not parts*embed_dim="
            f"{meta['parts']}*{meta['embed_dim']}"
        )
    return meta


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
