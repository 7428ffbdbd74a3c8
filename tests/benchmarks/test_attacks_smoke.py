"""Smoke runs of the attack functions of ``benchmarks.attacks`` against a tiny stand-in server, about a second each.

The stand-in (a standard-library HTTP server in a thread of the test process) answers like a guarded server: it
refuses a rebinding ``Host``, refuses ``POST /gallery`` from the headers, reads bodies with a 1 s timeout (408),
answers 431 to too many header lines, and serves a "thumbnail" by following whatever path it is given. The tests
check each attack's JSON shape and the counts that follow from that behaviour; the real before/after numbers come
from the full run (benchmarks/results/attacks.md).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import _attacks_client as client
from benchmarks import _attacks_report, attacks
from benchmarks import _attacks_runs as runs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    thumbnail: Path  # set on the subclass made per test server

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes = b"{}", content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bool:
        length = int(self.headers.get("Content-Length", 0))
        self.connection.settimeout(1.0)
        try:
            while length > 0:
                chunk = self.rfile.read1(min(length, 65536))
                if not chunk:
                    return False
                length -= len(chunk)
        except OSError:  # the 1 s timeout: a stalled or drip-fed body
            self.close_connection = True
            self._answer(408)
            return False
        return True

    def do_GET(self) -> None:
        if self.headers.get("Host") == runs.REBIND_HOST:
            self._answer(400)
        elif self.path == "/gallery/stats":
            self._answer(200, b'{"size": 3}')
        elif self.path.endswith("/thumbnail"):
            try:
                self._answer(200, self.thumbnail.read_bytes(), "image/jpeg")
            except OSError:
                self._answer(404)
        else:
            self._answer(200)

    def do_POST(self) -> None:
        if self.path == "/gallery" and int(self.headers.get("Content-Length", 0)) > 2**20:
            self.close_connection = True  # refused from the headers; the body is never read
            self._answer(403)
            return
        if not self._read_body():
            return
        if self.path == "/gallery":
            self._answer(403)
        elif self.path.split("?")[0] == "/search":
            self._answer(200, json.dumps({"results": [{"gallery_id": 7}, {"gallery_id": 8}]}).encode())
        else:
            self._answer(200)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An image root with one item folder holding a red JPEG, and a green outside twin."""
    folder = tmp_path / "root" / "cam1" / "0001"
    folder.mkdir(parents=True)
    red = np.zeros((32, 16, 3), np.uint8)
    red[..., 2] = 255
    cv2.imwrite(str(folder / "0001.jpg"), red)
    outside = tmp_path / "outside"
    outside.mkdir()
    runs.outside_image(outside / "0001.jpg")
    return tmp_path


@pytest.fixture
def url(root: Path) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"thumbnail": root / "root" / "cam1" / "0001" / "0001.jpg"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bodies_have_the_declared_length_and_the_bomb_decodes_to_its_size() -> None:
    heads, total = client.multipart([("images", "a.png", "image/png", 10), ("images", "b.png", "image/png", 5)])
    assert sum(map(len, heads)) + 15 == total
    png = client.bilevel_png(640, 480)
    assert len(png) < 2000
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3) and image.max() == 0
    body = runs.bomb_body(images=2, side=300)
    assert body.count(b"\x89PNG") == 2


def test_open_reads_host_and_gallery_probes(url: str) -> None:
    reads = runs.open_reads(url, [b"q1", b"q2", b"q3"])
    assert reads == {"requests": 3, "top_k": 100, "statuses": {"200": 3}, "distinct_ids": 2}
    assert runs.host_rebind(url) == {"host": runs.REBIND_HOST, "status": 400}
    probe = runs.gallery_without_key(url, b"\xff\xd8crop", wait_s=2.0)
    assert probe["declared_body"]["status"] == 403 and probe["declared_body"]["answered_before_body"]
    assert probe["full_body"]["status"] == 403 and probe["full_body"]["items_added"] == 0
    assert 60_000 < probe["full_body"]["bytes"] <= 64 * 1024


def test_thumbnail_race_counts_inside_outside_and_misses(url: str, root: Path) -> None:
    folder = root / "root" / "cam1" / "0001"
    result = runs.thumbnail_race(url, 1, folder, root / "outside", requests=80, threads=2)
    assert result["requests"] == 80 and result["swaps"] > 0
    counted = (result["served_inside"] + result["served_outside"] + result["other_200"] + result["status_404"]
               + result["status_500"] + sum(result["other_statuses"].values()))
    assert counted == 80 and result["served_inside"] > 0
    assert folder.is_dir() and not folder.is_symlink()  # the swap is undone


def test_memory_attacks_report_growth_and_statuses(url: str, tmp_path: Path) -> None:
    segments = runs.one_byte_segments(url, os.getpid(), body_bytes=3000, connections=2, after_s=0.0)
    assert segments["statuses"] == {"200": 2} and segments["bytes_sent"] == 2 * segments["body_bytes"]
    assert {"peak_hwm_growth_mib", "rss_growth_after_close_mib", "server_bytes_per_byte_sent"} <= set(segments)
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "part").write_bytes(b"x" * 4096)
    uploads = runs.maximal_uploads(url, os.getpid(), spool, concurrent=2, files=2, file_bytes=32 * 1024, settle_s=0)
    assert uploads["statuses"] == {"200": 2} and uploads["bytes_sent"] == 2 * uploads["request_bytes"]
    assert uploads["peak_temp_mib"] == round(4096 / 2**20, 1)


def test_bomb_stall_times_searches_alone_and_during(url: str) -> None:
    result = runs.bomb_stall(url, b"crop", body=runs.bomb_body(images=2, side=64), idle_s=0.3, bombs=1)
    assert [b["status"] for b in result["bombs"]] == [200]
    assert result["search_alone"]["n"] > 0 and "max_ms" in result["search_alone"]
    assert result["added_delay_ms"] is None or isinstance(result["added_delay_ms"], float)


def test_header_flood_and_drip_feed_are_ended_by_the_server(url: str) -> None:
    one = runs.header_flood(url, cap_s=2.0)
    assert one["status"] == 431 and one["ended_by_server"] and 64 * 1024 < one["bytes_sent"] < 2**20
    flood = runs.flood_latency(url, floods=1, seconds=1.0, idle_s=0.2)
    assert flood["flood_connections"] >= 1 and flood["healthz_idle"]["n"] > 0
    assert flood["healthz_during_flood"]["n"] > 0
    drip = runs.drip_feed(url, interval_s=1.5, cap_s=5.0)
    assert drip["status"] == 408 and drip["ended_by_server"] and drip["seconds"] < 4.0


def test_read_status_without_an_answer_is_none() -> None:
    left, right = socket.socketpair()
    with left, right:
        right.close()
        assert client.read_status(left, timeout_s=0.2) is None


def test_report_puts_before_and_after_side_by_side(tmp_path: Path) -> None:
    results = {"model": "model.onnx", "gallery_items": 960, "model_note": "", "before_commit": "abc",
               "after_commit": "def", "attacks": {
                   "host_rebind": {"target": attacks.TARGETS["host_rebind"], "before": {"status": 200},
                                   "after": {"status": 400}},
                   "drip_feed": {"target": attacks.TARGETS["drip_feed"],
                                 "before": {"status": None, "ended_by_server": False, "seconds": 90.0, "cap_s": 90},
                                 "after": {"status": 408, "ended_by_server": True, "seconds": 30.1, "cap_s": 90}}}}
    text = _attacks_report.report(results)
    assert "| host_rebind | Host rebind.attacker.example on /gallery/stats: status | 200 | 400 | yes |" in text
    assert "not ended / 90.0 (90) | 408 / 30.1 (90) | yes |" in text
    args = attacks.parse_args(["--model", "m", "--gallery", "g", "--images", "i", "--json", str(tmp_path / "x.json")])
    assert (args.out, args.name, args.upload_concurrency) == (tmp_path, "x", [4, 8])
