"""A real ``python -m serving serve`` process on loopback: readiness, 32 concurrent searches, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from xmreid.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(re.escape(name + (("{" + labels + "}") if labels else "")) + r" ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll /readyz (not a fixed sleep) until it answers 200, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready in time")


@pytest.mark.slow
def test_uvicorn_process_serves_concurrent_searches_in_fewer_model_calls(tiny_onnx, tiny_gallery, ir_queries) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XMREID_API_KEY": ""}
    cmd = [sys.executable, "-m", "serving", "serve", "--model", str(tiny_onnx), "--gallery", str(tiny_gallery),
           "--port", str(port), "--max-batch-size", "16", "--max-wait-ms", "20", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(base, proc)
        images = [q.path.read_bytes() for q in ir_queries]
        n = 32

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60.0,
                                         limits=httpx.Limits(max_connections=n)) as client:
                return await asyncio.gather(*(
                    client.post("/search", params={"top_k": 5},
                                files={"image": ("q.jpg", images[i % len(images)], "image/jpeg")})
                    for i in range(n)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses if r.status_code != 200]
        assert all(len(r.json()["results"]) == 5 for r in responses)
        # Same image, same answer, whichever batch it rode in.
        by_image: dict[int, list[int]] = {}
        for i, r in enumerate(responses):
            ids = [h["gallery_id"] for h in r.json()["results"]]
            assert by_image.setdefault(i % len(images), ids)[:1] == ids[:1]

        text = httpx.get(f"{base}/metrics").text
        assert metric(text, "xmreid_http_requests_total", 'endpoint="/search",method="POST",status="200"') == n
        calls = metric(text, "xmreid_model_calls_total")
        assert 1 <= calls < n, f"{calls} model calls for {n} concurrent requests: nothing was batched"
        assert metric(text, "xmreid_model_batch_size_sum") == n
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, proc.stderr.read().decode()[-3000:]


def test_serve_cli_reports_user_mistakes_without_starting(tmp_path, tiny_onnx) -> None:
    from serving.server import main

    with pytest.raises(UserError, match="model file not found"):
        main(["--model", str(tmp_path / "nope.onnx"), "--gallery", str(tmp_path)])
    with pytest.raises(UserError, match="no gallery in"):
        main(["--model", str(tiny_onnx), "--gallery", str(tmp_path / "missing")])
    with pytest.raises(UserError, match="--max-batch-size"):
        main(["--model", str(tiny_onnx), "--gallery", str(tmp_path), "--max-batch-size", "0"])
    # Through the dispatcher: one line on stderr and exit status 1, no traceback.
    proc = subprocess.run([sys.executable, "-m", "serving", "serve", "--model", str(tmp_path / "nope.onnx"),
                           "--gallery", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1 and "model file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_json_log_format_is_one_object_per_line_with_request_ids(tiny_onnx, tiny_gallery, ir_queries) -> None:
    """``serve --log-format json``: every line a real process logs (startup and shutdown and uvicorn's error log
    on stderr, uvicorn's access log on stdout, as uvicorn routes them) is one JSON object, and the access line
    of a request carries its X-Request-ID."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XMREID_API_KEY": ""}
    cmd = [sys.executable, "-m", "serving", "serve", "--model", str(tiny_onnx), "--gallery", str(tiny_gallery),
           "--port", str(port), "--log-format", "json", "--no-save"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_ready(base, proc)
        files = {"image": ("q.jpg", ir_queries[0].path.read_bytes(), "image/jpeg")}
        assert httpx.post(f"{base}/search", files=files, headers={"X-Request-ID": "json-log-1"},
                          timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    import json

    lines = [line for line in (out + err).decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # raises on any line that is not one JSON object
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"serving.runtime.state", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = [r for r in records if r["logger"] == "uvicorn.access" and "/search" in r["message"]]
    assert access and access[0]["request_id"] == "json-log-1", access
