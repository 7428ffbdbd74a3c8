"""``python -m export triton``: the generated config.pbtxt parsed back, and the repository layout."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnx
import pytest

from export.__main__ import main as export_cli
from export.artifact import read_metadata
from export.triton import write_repository
from xmreid.errors import UserError

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


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    entries = config["parameters"] if isinstance(config["parameters"], list) else [config["parameters"]]
    return {e["key"]: e["value"]["string_value"] for e in entries}


def test_onnx_repository(tiny_onnx: Path, tmp_path: Path) -> None:
    meta = read_metadata(tiny_onnx)
    rc = export_cli(["triton", "--onnx", str(tiny_onnx), "--out", str(tmp_path / "repo"), "--name", "reid",
                     "--max-batch-size", "32", "--instances", "2", "--kind", "KIND_CPU"])
    assert rc == 0
    model_dir = tmp_path / "repo" / "reid"
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    params = _parameters(config)
    del config["parameters"]
    h, w = meta["height"], meta["width"]
    # Triton's guide: start from plain dynamic batching (no delay, no preferred sizes) and tune from measurements.
    assert config == {
        "name": "reid",
        "backend": "onnxruntime",
        "max_batch_size": 32,
        "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": [3, h, w]}],
        "output": [{"name": "descriptors", "data_type": "TYPE_FP32", "dims": [meta["descriptor_dim"]]}],
        "dynamic_batching": {},
        "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
        "model_warmup": [{"name": "zero_batch", "batch_size": 1,
                          "inputs": {"key": "images", "value": {"data_type": "TYPE_UINT8", "dims": [3, h, w],
                                                                 "zero_data": "true"}}}],
    }
    # Everything serve --backend triton needs, with the ONNX file's sha256 as the gallery fingerprint.
    assert params["fingerprint"] == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
    assert {k: params[k] for k in ("height", "width", "descriptor_dim", "parts")} == {
        k: str(meta[k]) for k in ("height", "width", "descriptor_dim", "parts")}
    assert (model_dir / "1" / "model.onnx").read_bytes() == tiny_onnx.read_bytes()
    assert sorted(p.name for p in model_dir.rglob("*")) == ["1", "config.pbtxt", "model.onnx"]


def test_tuning_options_are_written_only_when_asked(tiny_onnx: Path, tmp_path: Path) -> None:
    rc = export_cli(["triton", "--onnx", str(tiny_onnx), "--out", str(tmp_path), "--max-batch-size", "16",
                     "--max-queue-delay-us", "500", "--preferred-batch-sizes", "4,16", "--max-queue-size", "64",
                     "--queue-timeout-us", "100000", "--gpus", "0,1", "--warmup-batch-size", "0"])
    assert rc == 0
    config = parse_pbtxt((tmp_path / "xmreid" / "config.pbtxt").read_text())
    assert config["dynamic_batching"] == {
        "preferred_batch_size": [4, 16], "max_queue_delay_microseconds": 500,
        "default_queue_policy": {"timeout_action": "REJECT", "default_timeout_microseconds": 100000,
                                 "max_queue_size": 64}}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU", "gpus": [0, 1]}]
    assert "model_warmup" not in config


def test_plan_repository(tiny_onnx: Path, tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")  # the writer only copies the engine; TensorRT reads it, not us
    model_dir = write_repository(tiny_onnx, tmp_path / "repo", plan=plan, max_batch_size=8,
                                 preferred_batch_sizes=[4, 8])
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    assert config["backend"] == "tensorrt" and config["name"] == "xmreid"
    assert config["dynamic_batching"] == {"preferred_batch_size": [4, 8]}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]
    assert _parameters(config)["fingerprint"] == hashlib.sha256(tiny_onnx.read_bytes()).hexdigest()
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
    with pytest.raises(UserError, match="--gpus applies to --kind KIND_GPU only"):
        write_repository(tiny_onnx, tmp_path, kind="KIND_CPU", gpus=[0])
    with pytest.raises(UserError, match="warmup-batch-size"):
        write_repository(tiny_onnx, tmp_path, max_batch_size=8, warmup_batch_size=9)
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
