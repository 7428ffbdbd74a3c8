"""Issue 22's operator fixes: every setting a flag, ``--version``, OpenCV's decoder backstop, JSON logs."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.core.config import Settings
from serving.server import build_parser, settings_from_args
from xmreid.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def _settings_dests(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    dests: dict[str, list[str]] = {}
    for action in parser._actions:
        if action.option_strings:
            dests.setdefault(action.dest, []).extend(action.option_strings)
    return dests


def test_every_settings_field_is_a_flag() -> None:
    dests = _settings_dests(build_parser())
    missing = set(Settings.model_fields) - set(dests)
    assert not missing, f"settings without a serve flag: {sorted(missing)}"
    # The flags the README and scripts already use keep their spelling.
    for flag in ("--max-queue", "--max-pixels", "--max-side", "--decode-threads", "--model-concurrency",
                 "--max-images-per-request", "--image-root", "--no-save", "--read-only", "--log-format",
                 "--triton-url", "--log-level"):
        assert any(flag in flags for flags in dests.values()), flag


def test_help_shows_each_default_and_variable() -> None:
    text = build_parser().format_help()
    for name in Settings.model_fields:
        assert f"XMREID_{name.upper()}" in text, name
    flat = " ".join(text.split())
    assert "(default: 1024; env XMREID_MAX_QUEUE)" in flat
    assert "(default: 36000000; env XMREID_MAX_PIXELS)" in flat
    assert "(default: required; env XMREID_GALLERY)" in flat
    assert "(default: text; env XMREID_LOG_FORMAT)" in flat


@pytest.mark.parametrize("argv, field, value", [
    (["--max-queue", "7"], "max_queue", 7), (["--max-pixels", "1000"], "max_pixels", 1000),
    (["--max-side", "640"], "max_side", 640), (["--decode-threads", "3"], "decode_threads", 3),
    (["--model-concurrency", "2"], "model_concurrency", 2), (["--max-images-per-request", "5"], "max_images_per_request", 5),
    (["--log-format", "json"], "log_format", "json"), (["--no-save"], "save_on_mutation", False),
    (["--no-save-on-mutation"], "save_on_mutation", False), (["--read-only"], "read_only", True),
    (["--image-root", "/a", "--image-root", "/b"], "image_roots", [Path("/a"), Path("/b")]),
])
def test_flags_reach_the_settings(argv, field, value, tmp_path) -> None:
    base = ["--model", str(tmp_path / "m.onnx"), "--gallery", str(tmp_path)]
    settings = settings_from_args(build_parser().parse_args(base + argv))
    assert getattr(settings, field) == value


def test_env_is_honoured_and_a_flag_wins(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XMREID_MAX_QUEUE", "11")
    monkeypatch.setenv("XMREID_DECODE_THREADS", "4")
    base = ["--model", str(tmp_path / "m.onnx"), "--gallery", str(tmp_path)]
    settings = settings_from_args(build_parser().parse_args([*base, "--max-queue", "3"]))
    assert settings.max_queue == 3 and settings.decode_threads == 4


def test_bad_values_are_one_sentence(tmp_path) -> None:
    base = ["--model", str(tmp_path / "m.onnx"), "--gallery", str(tmp_path)]
    with pytest.raises(UserError, match=r"--max-queue: Input should be greater than or equal to 1"):
        settings_from_args(build_parser().parse_args([*base, "--max-queue", "0"]))
    with pytest.raises(UserError, match=r"--model is required \(or set XMREID_MODEL\), except with --backend triton"):
        settings_from_args(build_parser().parse_args(["--gallery", str(tmp_path)]))
    with pytest.raises(UserError, match=r"backend triton needs --triton-url"):
        settings_from_args(build_parser().parse_args(["--gallery", str(tmp_path), "--backend", "triton"]))
    triton = settings_from_args(build_parser().parse_args(["--gallery", str(tmp_path), "--backend", "triton",
                                                           "--triton-url", "localhost:8001"]))
    assert triton.model is None and triton.triton_model == "xmreid"


def test_bad_flag_exits_2_with_usage() -> None:
    result = subprocess.run([sys.executable, "-m", "serving", "serve", "--log-format", "xml"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "invalid choice: 'xml'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["serving", "--version"], ["serving", "serve", "--version"],
                                  ["export", "--version"], ["training", "--version"]])
def test_version_on_each_cli(argv) -> None:
    from importlib import metadata

    result = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(metadata.version("xmreid"))


# -- OpenCV's own limit as a backstop ------------------------------------------------------------------------


def test_opencv_defaults_match_the_settings() -> None:
    from serving.core import opencv_limits

    fields = Settings.model_fields
    assert fields["max_pixels"].default == opencv_limits.DEFAULT_MAX_PIXELS
    assert fields["max_side"].default == opencv_limits.DEFAULT_MAX_SIDE


def test_opencv_backstop_refuses_what_the_header_check_let_through() -> None:
    """With OpenCV's limit at 400 pixels and the header check at a million, a 30x30 PNG is refused by OpenCV,
    and the refusal is the API's 422 ``too_many_pixels``, not an exception from inside cv2."""
    code = """
import os, sys
os.environ["XMREID_MAX_PIXELS"] = "400"
from serving.core.imageio import DecodeLimits, ImageDecodeError, decode_image
from serving.api.errors import status_for
import cv2, numpy as np
assert os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] == "400", os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"]
ok, png = cv2.imencode(".png", np.zeros((30, 30, 3), np.uint8))
try:
    decode_image(png.tobytes(), 8, 8, DecodeLimits(max_bytes=10**6, max_pixels=10**6, max_side=10**4))
except ImageDecodeError as exc:
    print(status_for(exc), exc.error)
small = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))[1].tobytes()
print(decode_image(small, 8, 8).shape)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_IO_")}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["422 too_many_pixels", "(8, 8, 3)"]


def test_serve_sets_the_limit_from_its_flags_before_cv2_loads() -> None:
    code = """
import sys
from serving.server import build_parser, settings_from_args
from serving.core import opencv_limits
s = settings_from_args(build_parser().parse_args(["--model", "m.onnx", "--gallery", ".", "--max-pixels", "1234",
                                                  "--max-side", "99"]))
assert "cv2" not in sys.modules
print(opencv_limits.apply(s.max_pixels, s.max_side))
import os, cv2
print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"], os.environ["OPENCV_IO_MAX_IMAGE_WIDTH"])
print(opencv_limits.apply(5, 5))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCV_IO_", "XMREID_"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["True", "1234 99", "False"]
    assert "decoder backstop stays at 1234 pixels" in result.stderr


# -- structured logs -----------------------------------------------------------------------------------------


def _capture(log_format: str) -> tuple[logging.Logger, io.StringIO, logging.Handler]:
    from serving.core import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.make_formatter(log_format))
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger(f"xmreid.test.{log_format}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, stream, handler


def test_json_logs_are_one_object_per_line_with_the_request_id() -> None:
    from serving.core.logs import request_id_var

    logger, stream, handler = _capture("json")
    try:
        logger.info("plain %s", "record")
        token = request_id_var.set("abc123")
        try:
            logger.warning("inside a request\nwith a newline")
        finally:
            request_id_var.reset(token)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert {"ts", "level", "logger", "message"} <= set(records[0]) and "request_id" not in records[0]
    assert records[0]["message"] == "plain record" and records[0]["level"] == "INFO"
    assert records[0]["ts"].endswith("+00:00")
    assert records[1]["request_id"] == "abc123" and records[1]["message"] == "inside a request\nwith a newline"
    assert records[2]["level"] == "ERROR" and "ValueError: boom" in records[2]["exc_info"]


def test_text_logs_append_the_request_id() -> None:
    from serving.core.logs import request_id_var

    logger, stream, handler = _capture("text")
    try:
        token = request_id_var.set("r-1")
        logger.info("hello")
        request_id_var.reset(token)
        logger.info("bye")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert first.endswith("hello [r-1]") and second.endswith("bye")


def test_uvicorn_config_uses_the_json_formatter() -> None:
    import logging.config

    from serving.server import log_config

    config = log_config(10.0, "json")
    assert {h["formatter"] for h in config["handlers"].values()} == {"json"}
    assert all("request_id" in h["filters"] and "repeat" in h["filters"] for h in config["handlers"].values())
    logging.config.dictConfig(config)  # loads: every class path in it resolves
    text = log_config(10.0, "text")
    assert {h["formatter"] for h in text["handlers"].values()} == {"default", "access"}


def test_requests_carry_their_id_into_json_logs(make_client, serving_embedder, tmp_path) -> None:
    """A record logged while handling a request (a refused thumbnail, logged from its worker thread) carries the
    request's X-Request-ID; one logged outside requests has none."""
    from index import Gallery
    from serving.core import logs

    (tmp_path / "images").mkdir()
    gallery = Gallery.create(int(serving_embedder.dim), fingerprint=serving_embedder.fingerprint)
    gallery.set_note("image_root", str(tmp_path / "images"))
    (item,) = gallery.add(np.ones((1, int(serving_embedder.dim)), np.float32),
                          [{"camera": 1, "source": "../../etc/passwd"}])
    client = make_client(embedder=serving_embedder, gallery_obj=gallery, image_roots=[])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    target = logging.getLogger("serving.api.thumbnails")
    target.addHandler(handler)
    try:
        r = client.get(f"/gallery/{int(item)}/thumbnail", headers={"X-Request-ID": "req-42"})
        target.warning("outside any request")
    finally:
        target.removeHandler(handler)
    assert r.status_code == 403
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["request_id"] == "req-42" and "refused" in inside["message"]
    assert "request_id" not in outside


def test_readme_settings_table_lists_every_field() -> None:
    text = (REPO / "docs" / "serving.md").read_text()
    start = text.index("| variable | flag | default | meaning |")
    table = text[start:text.index("\n\n", start)]
    listed = set(re.findall(r"^\| `XMREID_([A-Z_]+)`", table, flags=re.M))
    assert listed == {name.upper() for name in Settings.model_fields}


def test_configure_replaces_only_its_own_handler_and_restores() -> None:
    from serving.core import logs

    root = logging.getLogger()
    foreign = logging.NullHandler()
    root.addHandler(foreign)
    before = list(root.handlers)
    try:
        restore_first = logs.configure("text")
        restore_second = logs.configure("json")
        ours = [h for h in root.handlers if getattr(h, "_xmreid", False)]
        assert len(ours) == 1 and isinstance(ours[0].formatter, logs.JsonFormatter)
        assert foreign in root.handlers
        restore_second()
        restore_first()
        assert set(root.handlers) == set(before)
    finally:
        root.removeHandler(foreign)
