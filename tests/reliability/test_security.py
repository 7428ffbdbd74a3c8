"""Security properties: the API key (constant-time, never logged, required for every mutation), the
loopback default bind, body limits enforced before bodies are read, and no endpoint that reads an
arbitrary server path.

Route lists come from the app's own OpenAPI schema plus its non-schema routes (pages, ``/static``), so a
route added later is attacked too without editing this file.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import socket
import urllib.parse
import uuid
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.reliability.conftest import JPEG

KEY = "k3y-" + "7" * 28  # 32 characters
MUTATING = {"post", "put", "patch", "delete"}
READ_ONLY_POSTS = {"/search", "/search/batch", "/search/track"}  # POST because they carry uploads; they change nothing


def mutation_operations(schema: dict) -> list[tuple[str, str]]:
    ops = [(method, path) for path, item in schema["paths"].items() for method in item
           if method in MUTATING and path not in READ_ONLY_POSTS]
    assert ("post", "/gallery") in ops and ("delete", "/gallery/{item_id}") in ops
    return ops


def fill(path: str, value: str = "0") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


# ----------------------------------------------------------------------------- the API key


def test_api_key_is_compared_with_hmac_compare_digest(make_client, gallery_copy, ir_queries, monkeypatch) -> None:
    import hashlib
    import hmac

    import serving.api.keys as keys

    source = inspect.getsource(keys.KeyRing.identify)
    assert "compare_digest" in source and not re.search(r"(key|digest|presented)[^\n]*[!=]=", source), \
        "the key must only be compared with hmac.compare_digest"
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    client = make_client(gallery=gallery_copy, api_key=KEY)
    jpeg = ir_queries[0].path.read_bytes()

    def add(headers):
        return client.post("/gallery", headers=headers, files=[("images", ("a.jpg", jpeg, JPEG))],
                           data={"metadata": json.dumps([{"camera": 1}])})

    same_length_wrong = KEY[:-1] + ("8" if KEY[-1] != "8" else "9")
    assert len(same_length_wrong) == len(KEY)
    response = add({"X-API-Key": same_length_wrong})
    assert response.status_code == 403 and response.json()["error"] == "invalid_api_key"
    def digest(text: str) -> bytes:
        return hashlib.sha256(text.encode()).digest()

    # The whole presented key, hashed, against the stored hash (keys are hashed at rest): one call per key.
    assert calls == [(digest(same_length_wrong), digest(KEY))]
    for wrong in (KEY[:-1], KEY + "7", KEY.upper(), "0" + KEY[1:]):  # prefix, suffix, case, first byte
        assert add({"X-API-Key": wrong}).status_code == 403, wrong
    assert add({}).status_code == 401
    assert add({"X-API-Key": KEY}).status_code == 201
    assert calls[-1] == (digest(KEY), digest(KEY))
    # Non-ASCII bytes in the header (latin-1 on the wire) are a 403, not a decoding 500.
    assert add({"X-API-Key": "é".encode() * 16}).status_code == 403
    assert add({"X-API-Key": b"\xff" * 32}).status_code == 403


def test_api_key_is_never_logged_or_echoed_in_process(make_client, gallery_copy, ir_queries, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(gallery=gallery_copy, api_key=KEY)
    wrong = "wrong-" + KEY[6:]
    jpeg = ir_queries[0].path.read_bytes()
    answers = []
    for header in (KEY, wrong):
        answers.append(client.post("/gallery", headers={"X-API-Key": header}, data={"metadata": "[{\"camera\": 1}]"},
                                   files=[("images", ("a.jpg", jpeg, JPEG))]))
        answers.append(client.delete("/gallery/0", headers={"X-API-Key": header}))
        answers.append(client.delete("/gallery/999999", headers={"X-API-Key": header}))
    answers += [client.get(p) for p in ("/openapi.json", "/metrics", "/gallery/stats", "/readyz", "/healthz")]
    for response in answers:
        text = response.text + json.dumps(dict(response.headers))
        assert KEY not in text and wrong not in text, response.request.url
    assert KEY not in caplog.text and wrong not in caplog.text
    # The settings object does not give it away either (pydantic SecretStr).
    settings = client.app.state.settings
    assert KEY not in repr(settings) and KEY not in str(settings) and KEY not in settings.model_dump_json()


@pytest.mark.slow
def test_api_key_is_never_in_the_server_process_output(server_factory, gallery_copy, ir_queries) -> None:
    server = server_factory(gallery_copy, "--log-level", "debug", env={"XMREID_API_KEY": KEY})
    wrong = "wrong-" + KEY[6:]
    jpeg = ir_queries[0].path.read_bytes()
    with httpx.Client(base_url=server.base, timeout=30) as client:
        for header in (KEY, wrong, ""):
            client.post("/gallery", headers={"X-API-Key": header}, data={"metadata": "[{\"camera\": 1}]"},
                        files=[("images", ("a.jpg", jpeg, JPEG))])
            client.delete("/gallery/999999", headers={"X-API-Key": header})
        assert client.delete("/gallery/0", headers={"X-API-Key": KEY}).status_code == 200
    assert server.stop() == 0
    output = server.output()
    assert "DELETE /gallery/0" in output  # debug access logging was on: the requests were logged...
    assert KEY not in output and wrong not in output  # ...without the key
    assert KEY not in " ".join(server.argv)  # passed through the environment, not the visible command line


def test_every_mutation_endpoint_refuses_without_the_key(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, api_key=KEY, open_search=True)  # reads open: a kiosk beside the key
    schema = client.get("/openapi.json").json()
    size = client.get("/gallery/stats").json()["size"]
    jpeg = ir_queries[0].path.read_bytes()
    valid_add = {"files": [("images", ("a.jpg", jpeg, JPEG))], "data": {"metadata": json.dumps([{"camera": 1}])}}
    for method, path in mutation_operations(schema):
        op = schema["paths"][path][method]
        assert {"ApiKey": []} in op.get("security", []), f"{method.upper()} {path} does not declare the key"
        url = fill(path)
        for headers, status in (({}, 401), ({"X-API-Key": "nope"}, 403), ({"X-API-Key": ""}, 401)):
            # A well-formed request and an empty one: the key is checked either way.
            for kwargs in ((valid_add if path == "/gallery" else {}), {}):
                response = client.request(method.upper(), url, headers=headers, **kwargs)
                assert response.status_code == status, (method, path, headers, response.text)
    assert client.get("/gallery/stats").json()["size"] == size  # nothing changed
    assert post_ok(client, jpeg)  # reading needs no key
    assert client.delete("/gallery/0", headers={"X-API-Key": KEY}).status_code == 200


def post_ok(client, jpeg: bytes) -> bool:
    return client.post("/search", files={"image": ("q.jpg", jpeg, JPEG)}).status_code == 200


# ----------------------------------------------------------------------------- bind address


def test_default_bind_is_loopback_in_settings_and_cli(tiny_onnx, tmp_path, monkeypatch) -> None:
    from serving.core.config import Settings
    from serving.server import build_parser, settings_from_args

    monkeypatch.delenv("XMREID_HOST", raising=False)
    assert Settings.model_fields["host"].default == "127.0.0.1"
    assert Settings(model=tiny_onnx, gallery=tmp_path).host == "127.0.0.1"
    args = build_parser().parse_args(["--model", str(tiny_onnx), "--gallery", str(tmp_path)])
    assert args.host is None and settings_from_args(args).host == "127.0.0.1"


def _listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses of LISTEN sockets on ``port`` in the process's network namespace."""
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, _remote, state = line.split()[1:4]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":
                found.add(address)
    return found


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


@pytest.mark.slow
def test_server_process_listens_on_loopback_only_by_default(server_factory, tiny_gallery) -> None:
    server = server_factory(tiny_gallery, "--no-save", "--log-level", "warning")  # no --host, no XMREID_HOST
    assert _listening_addresses(server.pid, server.port) == {"0100007F"}  # 127.0.0.1, little-endian hex
    ip = _non_loopback_ip()
    if ip is not None:  # the same port on this machine's external address must not answer
        with pytest.raises(OSError):
            socket.create_connection((ip, server.port), timeout=2).close()


# ----------------------------------------------------------------------------- body limits before reading


def _run_asgi(app, scope: dict, body_chunks) -> tuple[int, int, int]:
    """Call the ASGI app; returns (status, receive calls, body bytes handed over)."""
    sent: list[dict] = []
    pulled = {"calls": 0, "bytes": 0}
    chunks = iter(body_chunks)

    async def receive():
        pulled["calls"] += 1
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled["bytes"] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), pulled["calls"], pulled["bytes"]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
            "raw_path": path.encode(), "root_path": "", "scheme": "http", "query_string": b"",
            "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}


def test_body_limits_are_enforced_before_bodies_are_read(make_client) -> None:
    kib = 1024
    client = make_client(max_upload_bytes=256 * kib, max_images_per_request=4)
    app, settings = client.app, client.app.state.settings
    schema = client.get("/openapi.json").json()
    limits = {("POST", "/search"): settings.body_limit(1), ("POST", "/search/batch"): settings.body_limit(4),
              ("POST", "/gallery"): settings.body_limit(4),
              ("POST", "/search/track"): settings.body_limit(settings.max_track_crops)}
    routes = [(m.upper(), fill(p)) for p, item in schema["paths"].items() for m in item] + [("GET", "/")]
    chunk = bytes(64 * kib)
    for method, path in routes:
        limit = limits.get((method, path), 64 * kib)
        # 1. A declared length over the limit: 413 before a single receive() call.
        status, calls, _ = _run_asgi(app, _scope(method, path, [(b"content-length", str(limit + 1).encode())]),
                                     iter(lambda: chunk, None))
        assert (status, calls) == (413, 0), (method, path, status, calls)
    # 2. A 100 MB declared length on the smallest route: the same, whatever the number.
    status, calls, _ = _run_asgi(app, _scope("POST", "/search", [(b"content-length", str(100 * 2**20).encode())]),
                                 iter(lambda: chunk, None))
    assert (status, calls) == (413, 0)
    # 3. Streamed without a length (chunked), an endless upload: cut off at the route's limit, not read to the end.
    boundary = b"xmreid"
    for (method, path), limit in limits.items():
        head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="' +
                (b"image" if path == "/search" else b"images") +
                b'"; filename="a.jpg"\r\nContent-Type: image/jpeg\r\n\r\n')

        def endless():
            yield head
            while True:
                yield chunk

        headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary), (b"transfer-encoding", b"chunked")]
        status, _calls, pulled = _run_asgi(app, _scope(method, path, headers), endless())
        assert status == 413, (path, status)
        assert limit < pulled <= limit + len(chunk) + len(head), (path, pulled, limit)


# ----------------------------------------------------------------------------- no arbitrary server paths


@pytest.fixture
def planted(tmp_path: Path, sysu_root: Path) -> dict:
    """A secret text file and a secret JPEG outside the image root; both carry a unique token."""
    token = f"XMREID-SECRET-{uuid.uuid4().hex}"
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir()
    text = secret_dir / "sentinel.txt"
    text.write_text(token)
    image = cv2.imencode(".jpg", np.full((64, 32, 3), 200, np.uint8))[1].tobytes()
    # The token also sits in a JPEG comment (COM) segment, which a file served as-is would carry.
    jpeg = secret_dir / "secret.jpg"
    jpeg.write_bytes(image[:2] + b"\xff\xfe" + (len(token) + 2).to_bytes(2, "big") + token.encode() + image[2:])
    root = tmp_path / "root"
    root.mkdir()
    (root / "cam1").symlink_to(sysu_root / "cam1")
    return {"token": token, "paths": [text, jpeg], "root": root, "tmp": tmp_path}


def traversal_payloads(paths: list[Path]) -> list[str]:
    out = ["/etc/passwd", "../../../../../../etc/passwd", "..\\..\\..\\..\\etc\\passwd", "....//....//etc/passwd",
           "file:///etc/passwd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%252f..%252fetc%252fpasswd", "~/.ssh/id_rsa"]
    for p in paths:
        out += [str(p), "../" * 12 + str(p).lstrip("/"), "file://" + str(p), str(p).replace("/", "\\")]
    return out


def test_no_endpoint_reads_arbitrary_server_paths(make_client, tiny_gallery, planted) -> None:
    token, tmp = planted["token"], str(planted["tmp"])
    client = make_client(image_roots=[planted["root"]])
    schema = client.get("/openapi.json").json()
    payloads = traversal_payloads(planted["paths"])
    answers = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            params = [p for p in op.get("parameters", []) if p["in"] in ("path", "query")]
            for payload in payloads:
                quoted = urllib.parse.quote(payload, safe="")
                url = re.sub(r"\{[^}]+\}", quoted, path)
                query = {p["name"]: payload for p in params if p["in"] == "query"}
                response = client.request(method.upper(), url, params=query)
                answers += 1
                assert token not in response.text and token.encode() not in response.content, (method, url)
                assert not response.headers.get("content-type", "").startswith("image/"), (method, url, payload)
                assert tmp not in response.text, (method, url)  # no server path in any answer either
    # Routes outside the schema: the pages, the static mount, the docs.
    for base in ("/static/", "/", "/docs?url=", "/redoc?url=", "/gallery?x="):
        for payload in payloads:
            response = client.get(base + urllib.parse.quote(payload, safe="/"))
            answers += 1
            assert token not in response.text, (base, payload)
    # Raw ASGI paths keep their dot segments (HTTP clients would normalise them away before sending).
    for payload in payloads:
        for prefix in ("/static/", "/static/../", "/static/%2e%2e/"):
            status, _, _ = _run_asgi_get(client.app, prefix + payload)
            assert status in (400, 404, 405, 422), (prefix, payload, status)
    assert answers > 100


def _run_asgi_get(app, path: str) -> tuple[int, int, bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(_scope("GET", path, []), receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return int(start["status"]), 0, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.slow
def test_raw_traversal_requests_to_a_real_server(server_factory, tiny_gallery, planted) -> None:
    """Over a real socket, with paths no HTTP client library would send as written."""
    server = server_factory(tiny_gallery, "--no-save", "--log-level", "warning", "--image-root", str(planted["root"]))
    secret = str(planted["paths"][0])
    raw_paths = ["/static/../../../../../../" + secret.lstrip("/"), "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                 "/static/..%2f..%2f..%2fetc%2fpasswd", "/static//" + secret.lstrip("/"),
                 "/../../../" + secret.lstrip("/"),
                 "/gallery/0/thumbnail/../../../" + secret.lstrip("/"), "/static/" + "../" * 20 + "etc/passwd"]
    for raw in raw_paths:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(f"GET {raw} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status = int(data.split(b" ", 2)[1])
        assert planted["token"].encode() not in data and b"root:x:0:0" not in data, raw
        assert status != 200, (raw, data[:300])
