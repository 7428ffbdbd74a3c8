"""``python -m export triton``: the generated config.pbtxt parsed back, and the repository layout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

from export.__main__ import main as export_cli
from export.errors import UserError
from export.artifact import read_metadata
from export.triton import write_repository

_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"#]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """A small protobuf text-format reader: ``key: scalar``, ``key: [ ... ]``, ``key { ... }``, ``key [ {..} ]``.

    Repeated fields become lists; scalars become int / float / str (enums stay strings). Enough for
    Triton's ModelConfig, and strict: anything malformed raises ``ValueError``.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot tokenise at {text[pos:pos + 20]!r}")
            break
        pos = match.end()
        if match.group(1) is None and (tok := match.group(2) or match.group(3) or match.group(4)):
            tokens.append(tok)

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        for cast in (int, float):
            try:
                return cast(tok)
            except ValueError:
                pass
        return tok

    def message(i: int, end: str | None) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            if tokens[i] == "{":
                value, i = message(i + 1, "}")
                i += 1
            elif tokens[i] == "[":
                value, i = [], i + 1
                while tokens[i] != "]":
                    if tokens[i] == "{":
                        item, i = message(i + 1, "}")
                        value.append(item)
                        i += 1
                    elif tokens[i] != ",":
                        value.append(scalar(tokens[i]))
                        i += 1
                    else:
                        i += 1
                i += 1
            else:
                value, i = scalar(tokens[i]), i + 1
            if key in out:  # repeated field written one entry at a time
                out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + \
                    (value if isinstance(value, list) else [value])
            else:
                out[key] = value
        if end is not None and i >= len(tokens):
            raise ValueError("unbalanced braces")
        return out, i

    parsed, _ = message(0, None)
    return parsed


def test_parser_reads_both_repeated_forms() -> None:
    text = 'a: 1\nb: [ 2, 3 ]\nc { d: "x y" e: KIND_GPU }  # note\nf [ { g: 1.5 } ]\nh: 4\nh: 5\n'
    assert parse_pbtxt(text) == {"a": 1, "b": [2, 3], "c": {"d": "x y", "e": "KIND_GPU"}, "f": [{"g": 1.5}],
                                 "h": [4, 5]}


def test_onnx_repository(tiny_onnx: Path, tmp_path: Path) -> None:
    meta = read_metadata(tiny_onnx)
    rc = export_cli(["triton", "--onnx", str(tiny_onnx), "--out", str(tmp_path / "repo"), "--name", "reid",
                     "--max-batch-size", "32", "--instances", "2", "--kind", "KIND_CPU", "--max-queue-delay-us", "500"])
    assert rc == 0
    model_dir = tmp_path / "repo" / "reid"
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config == {
        "name": "reid",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 32,
        "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": [3, meta["height"], meta["width"]]}],
        "output": [{"name": "descriptors", "data_type": "TYPE_FP32", "dims": [meta["descriptor_dim"]]}],
        "dynamic_batching": {"preferred_batch_size": [8, 16, 32], "max_queue_delay_microseconds": 500},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
    }
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert sorted(p.name for p in model_dir.rglob("*")) == ["1", "config.pbtxt", "model.onnx"]


def test_plan_repository(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")  # the writer only copies the engine; TensorRT reads it, not us
    model_dir = write_repository(tiny_onnx, tmp_path / "repo", plan=plan, max_batch_size=8,
                                 preferred_batch_sizes=[4, 8])
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config["platform"] == "tensorrt_plan" and config["name"] == "xmreid"
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 2000}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert (model_dir / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert not (model_dir / "1" / "model.onnx").exists()


def test_repository_user_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"x")
    with pytest.raises(UserError, match="GPU only"):
        write_repository(tiny_onnx, tmp_path, plan=plan, kind="KIND_CPU")
    with pytest.raises(UserError, match="valid kinds: KIND_GPU, KIND_CPU"):
        write_repository(tiny_onnx, tmp_path, kind="KIND_TPU")
    with pytest.raises(UserError, match="--name"):
        write_repository(tiny_onnx, tmp_path, name="../escape")
    with pytest.raises(UserError, match="preferred batch sizes"):
        write_repository(tiny_onnx, tmp_path, max_batch_size=8, preferred_batch_sizes=[16])
    with pytest.raises(UserError, match="plan not found"):
        write_repository(tiny_onnx, tmp_path, plan=tmp_path / "absent.plan")
    proto = onnx.load(str(tiny_onnx))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # freeze the batch axis
    onnx.save(proto, str(tmp_path / "static.onnx"))
    with pytest.raises(UserError, match="static batch axis"):
        write_repository(tmp_path / "static.onnx", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_triton_command_does_not_import_torch(tiny_onnx: Path, tmp_path: Path) -> None:
    """The repository writer runs where only onnx is installed (e.g. a Triton host)."""
    code = ("import sys; from export.triton import main; "
            f"assert main(['--onnx', {str(tiny_onnx)!r}, '--out', {str(tmp_path)!r}]) == 0; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-2:] == ["False", "False"]
