"""Fixtures of the export tests: the tiny model's INT8 versions, quantized once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_int8(tiny_onnx: Path, sysu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_onnx`` quantized for the CPU (the defaults of ``python -m export quantize``), calibrated on ``sysu_root``."""
    from export.quantize import quantize_onnx

    return quantize_onnx(tiny_onnx, sysu_root, tmp_path_factory.mktemp("int8") / "model.int8.onnx", num_images=64)
