"""Hostile uploads and parameters, one test each, through the HTTP API.

Most run in-process (FastAPI's TestClient, the tiny model, the shared gallery). The ones whose promise is
about the *server process* (a bomb must not make it allocate, a 100 MB body must not be read) run against a
real ``python -m serving serve`` and read its memory from ``/proc/<pid>/status`` (``VmHWM``, the peak
resident set since it started, so a spike between two samples cannot hide).

Decisions recorded here (and in docs/reliability.md):

* a 1x1 image is **accepted**: it is a valid image, resized like any other (to a uniform crop);
* EXIF orientation is **applied** (``cv2.IMREAD_COLOR``, as training's ``cv2.imread``), so a phone photo
  tagged "rotate 90" is searched upright;
* a 16-bit PNG with alpha is accepted: alpha dropped, each sample's high byte kept.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.reliability.conftest import JPEG, Server, start_server

MIB = 1024 * 1024


def post_search(client, data: bytes, name: str = "q.jpg", ctype: str = JPEG, **params):
    return client.post("/search", files={"image": (name, data, ctype)}, params=params)


def assert_error(response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) <= {"error", "detail", "request_id"} and body["detail"], body
    if error is not None:
        assert body["error"] == error, body
    return body


def hits(response) -> list[tuple[int, float]]:
    assert response.status_code == 200, response.text
    return [(h["gallery_id"], h["score"]) for h in response.json()["results"]]


def assert_same_hits(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=0, atol=1e-5)


def encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A structurally valid greyscale PNG of ``width`` x ``height`` zero pixels, CRCs correct.

    With ``rows`` < height, the IDAT holds only that many rows (a header that lies about its size); with
    ``rows`` None, all of them: a genuine decompression bomb (deflate squeezes zeros ~1000:1).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = bytes((1 + width) * (height if rows is None else rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9))
            + png_chunk(b"IEND", b""))


def jpeg_with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """``jpeg`` with the width and height in its first SOF segment replaced (the pixels say otherwise)."""
    data, pos = bytearray(jpeg), 2
    while True:
        marker, length = data[pos + 1], struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[pos + 5:pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        pos += 2 + length


def exif_orientation_segment(orientation: int) -> bytes:
    """An APP1 Exif segment whose only IFD0 entry is Orientation (tag 0x0112, SHORT) = ``orientation``."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    payload = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


# ----------------------------------------------------------------------------- a real server process


@pytest.fixture(scope="module")
def live(tiny_onnx: Path, tiny_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    server = start_server(tiny_onnx, tiny_gallery, log, args=["--no-save", "--log-level", "warning"])
    yield server
    server.stop()


def live_post(server: Server, data: bytes, ctype: str = JPEG, timeout: float = 60.0):
    import httpx

    return httpx.post(f"{server.base}/search", files={"image": ("x", data, ctype)}, timeout=timeout)


def test_decompression_bombs_are_refused_before_any_pixel_is_allocated(live: Server, ir_queries) -> None:
    warm = live_post(live, ir_queries[0].path.read_bytes())  # first request: lazy allocations happen now
    assert warm.status_code == 200, warm.text
    peak_before = live.peak_mib()
    jpeg = ir_queries[0].path.read_bytes()
    bombs = {
        # A tiny PNG whose header claims 10^10 pixels (30 GB of RGB once decoded).
        "png header 100000x100000": png_bomb(100_000, 100_000, rows=1),
        # A genuine bomb: every one of its 64 MP is really there, deflated to ~64 KB.
        "png 8000x8000 genuine": png_bomb(8000, 8000),
        # A JPEG whose frame header claims the largest size JPEG can express.
        "jpeg header 65535x65535": jpeg_with_size(jpeg, 65535, 65535),
        # Under the pixel budget but over the per-side limit (a 1 x 10^5 strip).
        "jpeg header 60000x2": jpeg_with_size(jpeg, 60000, 2),
    }
    sizes = {}
    for name, data in bombs.items():
        sizes[name] = len(data)
        body = assert_error(live_post(live, data), 422, "too_many_pixels")
        assert "limits are" in body["detail"], name
    grown = live.peak_mib() - peak_before
    print(f"bombs {sizes}: 422 each, server peak RSS +{grown:.1f} MiB")
    # Decoding even the smallest of these would need > 190 MB; refusing them costs nothing measurable.
    assert grown < 20, f"server peak RSS grew by {grown:.0f} MiB on decompression bombs {sizes}"
    assert max(sizes.values()) < 200 * 1024


def test_bomb_within_the_pixel_budget_costs_bounded_memory(live: Server) -> None:
    """A 1 KB JPEG claiming exactly the default budget (6000x6000 = 36 MP) is, by design, decoded.

    The decoder cannot tell a lying header from a uniform 36 MP photo, so the budget itself is the bound:
    one such request costs one full-size buffer (plus its RGB copy) while it decodes, and decoding runs in
    a fixed pool (``decode_threads``, 2 by default), so concurrent ones cannot multiply that beyond 2x.
    """
    from concurrent.futures import ThreadPoolExecutor

    data = jpeg_with_size(encode(".jpg", np.full((16, 16, 3), 128, np.uint8)), 6000, 6000)
    assert len(data) < 1024
    peak_before = live.peak_mib()
    response = live_post(live, data)
    assert response.status_code in (200, 400), response.text  # decoded grey, or refused as corrupt
    one = live.peak_mib() - peak_before
    with ThreadPoolExecutor(8) as pool:
        statuses = [r.status_code for r in pool.map(lambda _: live_post(live, data), range(8))]
    eight = live.peak_mib() - peak_before
    print(f"{len(data)}-byte JPEG claiming 6000x6000: {response.status_code}, server peak RSS +{one:.0f} MiB "
          f"for one, +{eight:.0f} MiB for 8 concurrent ({statuses.count(200)} x 200)")
    assert one < 400, f"one 36 MP upload raised the server's peak RSS by {one:.0f} MiB"
    assert set(statuses) <= {200, 400}
    # Eight at once cost what two do (the decode pool's size), not eight times one.
    assert eight < 2 * one + 150, f"8 concurrent 36 MP uploads: +{eight:.0f} MiB vs +{one:.0f} MiB for one"
    assert live_post(live, encode(".jpg", np.full((96, 32, 3), 90, np.uint8))).status_code == 200


def _read_status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_100mb_upload_with_content_length_is_refused_before_the_body_is_sent(live: Server) -> None:
    peak_before = live.peak_mib()
    declared = 100 * MIB
    boundary = "xmreidboundary"
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall((f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        sock.sendall(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
                     f"Content-Type: image/jpeg\r\n\r\n".encode() + bytes(64 * 1024))
        # The answer comes while 99.9 % of the declared body has not been sent at all.
        started = time.monotonic()
        assert _read_status(sock, timeout=10) == 413
        assert time.monotonic() - started < 10
    grown = live.peak_mib() - peak_before
    print(f"Content-Length 100 MiB: 413 after 64 KiB sent, server peak RSS +{grown:.1f} MiB")
    assert grown < 20, f"server peak RSS grew by {grown:.0f} MiB"


def test_100mb_chunked_upload_is_cut_off_at_the_route_limit(live: Server) -> None:
    """No Content-Length (chunked): the server counts bytes as they stream and answers 413 at its limit."""
    peak_before = live.peak_mib()
    boundary = "xmreidboundary"
    chunk = bytes(MIB)
    sent = 0
    status = None
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall((f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                      f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode())
        first = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
                 f"Content-Type: image/jpeg\r\n\r\n").encode()
        sock.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        sock.setblocking(True)
        while sent < 100 * MIB:
            try:
                sock.settimeout(5)
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                break  # the server stopped reading: it has answered
            sent += len(chunk)
            sock.settimeout(0.001)
            try:
                peek = sock.recv(4096, socket.MSG_PEEK)
            except (TimeoutError, BlockingIOError):
                continue
            if peek:
                break
        status = _read_status(sock, timeout=10)
    assert status == 413
    print(f"chunked 100 MiB: 413 after {sent / MIB:.0f} MiB sent, "
          f"server peak RSS +{live.peak_mib() - peak_before:.1f} MiB")
    limit = 10 * MIB + MIB  # one file at max_upload_bytes (10 MiB) + 1 MiB of multipart slack
    # What was sent before the answer: the limit plus what loopback socket buffers hold (several MiB), far
    # from 100 MiB.
    assert sent < limit + 16 * MIB, f"{sent / MIB:.0f} MiB were sent before the 413"
    grown = live.peak_mib() - peak_before
    assert grown < 40, f"server peak RSS grew by {grown:.0f} MiB while refusing a streamed upload"


# ----------------------------------------------------------------------------- in-process: bad bytes


def test_zero_byte_file(make_client) -> None:
    assert_error(post_search(make_client(), b""), 400, "empty_file")


def test_truncated_jpegs_at_every_stage(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    sos = jpeg.index(b"\xff\xda")
    cuts = {"inside SOI/APP0": 5, "before SOS": sos, "inside the scan": (sos + len(jpeg)) // 2,
            "EOI missing": len(jpeg) - 2, "last byte missing": len(jpeg) - 1}
    for name, cut in cuts.items():
        body = assert_error(post_search(client, jpeg[:cut]), 400)
        assert body["error"] in {"truncated_image", "corrupt_image"}, (name, body)
    assert post_search(client, jpeg).status_code == 200


def test_non_image_bytes_labelled_image_jpeg(make_client) -> None:
    client = make_client()
    fakes = {"text": b"definitely not a JPEG", "html": b"<html><script>alert(1)</script></html>",
             "elf": b"\x7fELF\x02\x01\x01" + bytes(200), "pdf": b"%PDF-1.7\n" + bytes(100),
             "zip": b"PK\x03\x04" + bytes(100), "json": json.dumps({"image": "x"}).encode()}
    for name, data in fakes.items():
        assert_error(post_search(client, data, name=f"{name}.jpg"), 400, "not_an_image")
    # Real formats we do not take are named as such (415), whatever the label says.
    assert_error(post_search(client, b"GIF89a" + bytes(100)), 415, "unsupported_format")
    assert_error(post_search(client, b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100)), 415, "unsupported_format")


def test_multipart_without_a_file(make_client) -> None:
    client = make_client()
    body = assert_error(client.post("/search"), 422, "validation_error")
    assert "image" in body["detail"]
    assert_error(client.post("/search", data={"other": "field"}), 422, "validation_error")
    assert_error(client.post("/search", files={"wrong_name": ("q.jpg", b"x", JPEG)}), 422, "validation_error")
    assert_error(client.post("/search/batch", data={"x": "y"}), 422, "validation_error")
    assert_error(client.post("/search", json={"image": "aGVsbG8="}), 422, "validation_error")
    empty = client.post("/search", content=b"--b--\r\n", headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert empty.status_code in (400, 422), empty.text


# ----------------------------------------------------------------------------- in-process: odd but valid images


def test_16bit_png_with_alpha_is_accepted_and_decoded_correctly(make_client, ir_queries) -> None:
    from serving.core.imageio import decode_image

    client = make_client()
    bgr = cv2.imdecode(np.frombuffer(ir_queries[0].path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    alpha = np.random.default_rng(0).integers(0, 65536, size=bgr.shape[:2], dtype=np.uint16)
    bgra16 = np.dstack([bgr.astype(np.uint16) * 257, alpha])  # v * 257: the high byte of each sample is v
    png16 = encode(".png", bgra16)
    png8 = encode(".png", bgr)
    assert cv2.imdecode(np.frombuffer(png16, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    # Alpha dropped (not composited), high bytes kept: exactly the 8-bit image.
    assert np.array_equal(decode_image(png16, 96, 32), decode_image(png8, 96, 32))
    assert_same_hits(hits(post_search(client, png16, "q.png", "image/png", top_k=10)),
                     hits(post_search(client, png8, "q.png", "image/png", top_k=10)))


def test_1x1_image_is_accepted_as_a_uniform_crop(make_client) -> None:
    client = make_client()
    pixel = np.array([[[30, 160, 220]]], np.uint8)
    one = post_search(client, encode(".png", pixel), "1x1.png", "image/png", top_k=5)
    # Resizing one pixel to the model's 96x32 gives that colour everywhere: same answer as a uniform crop.
    uniform = post_search(client, encode(".png", np.tile(pixel, (96, 32, 1))), "u.png", "image/png", top_k=5)
    assert len(hits(one)) == 5
    assert_same_hits(hits(one), hits(uniform))


def test_exif_orientation_is_applied(make_client, ir_queries) -> None:
    from serving.core.imageio import decode_image

    client = make_client()
    plain = ir_queries[0].path.read_bytes()
    rotated_tag = plain[:2] + exif_orientation_segment(6) + plain[2:]  # 6: "rotate 90 clockwise to view"
    stored = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR)
    upright = cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)
    assert stored.shape[0] != stored.shape[1]  # a non-square crop, so rotation is visible in the shape
    expected = cv2.resize(cv2.cvtColor(upright, cv2.COLOR_BGR2RGB), (32, 96), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(decode_image(rotated_tag, 96, 32), expected)
    assert_same_hits(hits(post_search(client, rotated_tag, top_k=10)),
                     hits(post_search(client, encode(".png", upright), "u.png", "image/png", top_k=10)))
    # Orientation 1 ("as stored") changes nothing.
    assert np.array_equal(decode_image(plain[:2] + exif_orientation_segment(1) + plain[2:], 96, 32),
                          decode_image(plain, 96, 32))


# ----------------------------------------------------------------------------- parameters


def test_huge_top_k(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    for top_k in (101, 10**6, 2**63, 10**100):
        body = assert_error(post_search(client, jpeg, top_k=top_k), 422, "invalid_top_k")
        assert "between 1 and 100" in body["detail"]
    # max_top_k is a setting; at the limit, a gallery smaller than top_k returns every item once.
    big = make_client(max_top_k=10_000)
    results = post_search(big, jpeg, top_k=10_000).json()["results"]
    size = big.get("/gallery/stats").json()["size"]
    assert len(results) == size and len({h["gallery_id"] for h in results}) == size


def test_negative_and_zero_top_k(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    for top_k in (0, -1, -(2**63), -(10**100)):
        assert_error(post_search(client, jpeg, top_k=top_k), 422, "invalid_top_k")
    for top_k in ("1e3", "NaN", "", "1; DROP TABLE items"):
        assert_error(post_search(client, jpeg, top_k=top_k), 422, "validation_error")


def test_unknown_camera(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    for camera in ([9], [1, 9], [-1], [2**70]):
        body = assert_error(post_search(client, jpeg, camera=camera), 422, "unknown_camera")
        assert "1, 2, 4, 5" in body["detail"]
    assert_error(post_search(client, jpeg, camera="cam1"), 422, "validation_error")
    assert post_search(client, jpeg, camera=[1, 1, 1]).status_code == 200  # repeats are harmless


def test_out_of_range_gallery_ids_are_4xx_not_500(make_client, gallery_copy) -> None:
    """Found by schemathesis: DELETE /gallery/<id beyond int64> answered 500 (numpy object array)."""
    client = make_client(gallery=gallery_copy)
    for item_id in (2**63, 2**64, 10**30, -1):
        assert_error(client.delete(f"/gallery/{item_id}"), 422, "validation_error")
    assert_error(client.delete(f"/gallery/{2**63 - 1}"), 404, "not_found")


def test_out_of_range_and_deeply_nested_metadata_is_4xx_not_500(make_client, gallery_copy, ir_queries) -> None:
    """Found while probing metadata: a camera or label past 64 bits (SQLite OverflowError) and ~1000 nested
    brackets (json RecursionError) answered 500; the gallery must also be left unchanged by them."""
    client = make_client(gallery=gallery_copy, save_on_mutation=True)
    size = client.get("/gallery/stats").json()["size"]
    files = [("images", ("a.jpg", ir_queries[0].path.read_bytes(), JPEG))]
    bad = [[{"camera": 2**63}], [{"camera": -(2**63) - 1}], [{"camera": 1, "person_label": 2**70}]]
    for meta in bad:
        body = assert_error(client.post("/gallery", files=files, data={"metadata": json.dumps(meta)}), 422,
                            "invalid_metadata")
        assert "64-bit" in body["detail"]
    for depth in (1000, 5000, 100_000):
        deep = '[{"camera": 1, "extra": ' + '{"a": ' * depth + "1" + "}" * depth + "}]"
        assert_error(client.post("/gallery", files=files, data={"metadata": deep}), 422, "invalid_metadata")
    assert client.get("/gallery/stats").json()["size"] == size
    # The edges themselves are fine.
    edge = [{"camera": 2**63 - 1, "person_label": -(2**63)}]
    assert client.post("/gallery", files=files, data={"metadata": json.dumps(edge)}).status_code == 201


# ----------------------------------------------------------------------------- names and metadata are data


HOSTILE_NAMES = ["../../../../tmp/xmreid-evil.jpg", "..\\..\\xmreid-evil.jpg", "/etc/passwd",
                 "名前 ünïcødé 🚀.jpg", "C:\\Windows\\win.ini", "a%2f..%2f..%2fb.jpg", "\u202egpj.exe"]
HOSTILE_META = [
    {"camera": 1, "source": "../../../../etc/passwd", "person_label": "'; DROP TABLE items; --"},
    {"camera": 2, "source": "/etc/shadow", "person_label": "名前", "extra": {"path": "../..", "ü": "🚀"}},
    {"camera": 4, "source": "摄像头/😀/../../x.jpg", "person_label": 7, "extra": {"nul": "a\u0000b"}},
    {"camera": 5, "source": "C:\\Windows\\win.ini", "person_label": "<img src=x onerror=alert(1)>"},
    {"camera": 1, "source": "a\u0000b.jpg", "person_label": None},
    {"camera": 2, "source": "\\\\server\\share\\x.jpg", "timestamp": "2024-05-01T12:00:00+02:00"},
    {"camera": 4, "source": "%2e%2e/%2e%2e/etc/passwd"},
]


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_unicode_and_dot_dot_in_names_and_metadata_are_stored_as_data(make_client, tiny_gallery, tmp_path,
                                                                      serving_embedder, ir_queries) -> None:
    from index import Gallery

    gallery_dir = Path(shutil.copytree(tiny_gallery, tmp_path / "g" / "gallery"))
    outside_before = _tree(tmp_path)
    client = make_client(gallery=gallery_dir, save_on_mutation=True)
    crops = [q.path.read_bytes() for q in ir_queries[:len(HOSTILE_META)]]
    files = [("images", (name, data, JPEG)) for name, data in zip(HOSTILE_NAMES, crops)]
    response = client.post("/gallery", files=files, data={"metadata": json.dumps(HOSTILE_META)})
    assert response.status_code == 201, response.text
    ids = response.json()["ids"]

    # Every string comes back byte for byte: from a search hit, and from the gallery saved on disk.
    for item_id, meta, data in zip(ids, HOSTILE_META, crops):
        top = post_search(client, data, top_k=1).json()["results"][0]
        assert top["gallery_id"] == item_id
        assert top["source"] == meta["source"] and top["person_label"] == meta.get("person_label")
    saved = Gallery.load(gallery_dir, fingerprint=serving_embedder.fingerprint).get(ids)
    for row, meta in zip(saved, HOSTILE_META):
        assert row["source"] == meta["source"] and row["person_label"] == meta.get("person_label")
        assert row["extra"] == meta.get("extra", {})
    # The upload names were echoed as data by /search/batch, never used to name a file.
    batch = client.post("/search/batch", files=files[:3]).json()["items"]
    assert [item["filename"] for item in batch] == HOSTILE_NAMES[:3]
    created = _tree(tmp_path) - outside_before
    assert all(p.startswith("g/gallery/") for p in created), sorted(created)
    assert not any("evil" in p or "passwd" in p or "win.ini" in p for p in created), sorted(created)
    assert not Path("/tmp/xmreid-evil.jpg").exists()


def test_hostile_sources_never_reach_the_filesystem_through_thumbnails(make_client, tiny_gallery, sysu_root,
                                                                       tmp_path, ir_queries) -> None:
    """With image roots configured, a source that climbs, is absolute, or links out is refused (403/404),
    and a file planted outside the root, a real JPEG, is never served."""
    gallery_dir = Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))
    root = Path(shutil.copytree(sysu_root / "cam1", tmp_path / "root" / "cam1"))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(ir_queries[1].path.read_bytes())
    (root / "link.jpg").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path)
    client = make_client(gallery=gallery_dir, image_roots=[root.parent])
    # A renamed route fails here instead of skipping the whole check unnoticed.
    assert "/gallery/{item_id}/thumbnail" in client.get("/openapi.json").json()["paths"], "thumbnail route missing"
    legit = next(p for p in sorted(root.rglob("*.jpg")) if not p.is_symlink())
    sources = [f"cam1/{legit.relative_to(root).as_posix()}", str(secret), "../secret.jpg", "cam1/../../secret.jpg",
               "cam1/link.jpg", "cam1/dirlink/secret.jpg", "..\\secret.jpg", "cam1/%2e%2e/%2e%2e/secret.jpg",
               "cam1/\u0000/secret.jpg", "file:///" + str(secret)]
    meta = [{"camera": 1, "source": s} for s in sources]
    files = [("images", (f"{i}.jpg", ir_queries[0].path.read_bytes(), JPEG)) for i in range(len(sources))]
    ids = client.post("/gallery", files=files, data={"metadata": json.dumps(meta)}).json()["ids"]

    ok = client.get(f"/gallery/{ids[0]}/thumbnail")
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/jpeg"
    for item_id, source in zip(ids[1:], sources[1:]):
        response = client.get(f"/gallery/{item_id}/thumbnail")
        assert response.status_code in (403, 404), (source, response.status_code)
        assert response.headers["content-type"].startswith("application/json")
        assert str(tmp_path) not in response.text  # no server path in the answer
