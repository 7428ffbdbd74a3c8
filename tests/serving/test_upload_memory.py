"""A ``/search`` body sent in one-byte pieces costs the server about its own size while it arrives.

Each body is posted straight into the ASGI app (on the app's own event loop), one byte per ``http.request``
message in its own loop iteration, as a client trickling TCP segments would; ``tracemalloc`` reads how much
more memory Python holds at every piece. A server that kept every message until the upload ended (hundreds
of bytes per byte) fails.
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from typing import Any

import cv2
import numpy as np
import pytest

BODY_BYTES = 96 * 1024  # big enough that per-message costs would dwarf it, small enough to send byte by byte


def _padded_jpeg(size: int) -> bytes:
    """A small JPEG crop padded with comment segments (COM, 0xFFFE) to ``size`` bytes: large to send, cheap
    to decode, so what the server holds while it arrives is the body itself."""
    rng = np.random.default_rng(0)
    ok, encoded = cv2.imencode(".jpg", rng.integers(0, 256, (96, 32, 3), dtype=np.uint8))
    assert ok
    jpeg = encoded.tobytes()
    padding = b""
    while len(jpeg) + len(padding) < size:
        n = min(65533, size - len(jpeg) - len(padding) - 4)
        if n <= 0:
            break
        padding += b"\xff\xfe" + struct.pack(">H", n + 2) + b"c" * n
    return jpeg[:2] + padding + jpeg[2:]


def _multipart(data: bytes, boundary: bytes = b"memtest0123") -> tuple[bytes, bytes]:
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n")
    return body, b"multipart/form-data; boundary=" + boundary


def _post_in_pieces(client: Any, body: bytes, content_type: bytes, query: bytes = b"top_k=5") -> tuple[int, int]:
    """POST ``body`` to ``/search`` one byte per message; return (status, most bytes held beyond the start)."""
    state: dict[str, Any] = {"pos": 0, "base": None, "most": 0, "status": None}

    async def receive() -> dict:
        await asyncio.sleep(0)  # each piece in its own loop iteration, as segments from a socket arrive
        current = tracemalloc.get_traced_memory()[0]
        if state["base"] is None:
            state["base"] = current
        state["most"] = max(state["most"], current - state["base"])
        pos = state["pos"]
        if pos < len(body):
            state["pos"] = pos + 1
            return {"type": "http.request", "body": body[pos:pos + 1], "more_body": pos + 1 < len(body)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "root_path": "", "query_string": query,
             "headers": [(b"host", b"localhost"), (b"content-type", content_type)],
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}

    async def run() -> None:
        await client.app(scope, receive, send)

    tracemalloc.start()
    try:
        client.portal.call(run)
    finally:
        tracemalloc.stop()
    return state["status"], state["most"]


@pytest.mark.parametrize("form", ["raw", "multipart"])
def test_a_body_in_one_byte_pieces_costs_about_its_size(make_client, form: str) -> None:
    client = make_client()
    image = _padded_jpeg(BODY_BYTES)
    body, content_type = (image, b"image/jpeg") if form == "raw" else _multipart(image)
    status, held = _post_in_pieces(client, body, content_type)
    assert status == 200
    # The body once, with a bytearray's or BytesIO's growth slack; not a message (~250 bytes) per byte.
    assert held <= 1.5 * len(body) + 64 * 1024, f"{held} bytes held for a {len(body)}-byte body"
