"""The ``POST /search`` shortcut answers exactly what the route answers, and hands everything else to it."""

from __future__ import annotations

import pytest

from serving.api import fast_search
from serving.api.fast_search import _single_image_part
from serving.api.raw_search import parse_query as _parse_query

B = b"xyz123"


def _body(part_headers: bytes, content: bytes, closing: bytes = b"--\r\n") -> bytes:
    return b"--" + B + b"\r\n" + part_headers + b"\r\n\r\n" + content + b"\r\n--" + B + closing


IMAGE = b'Content-Disposition: form-data; name="image"; filename="q.jpg"\r\nContent-Type: image/jpeg'


def test_query_strings_of_plain_integers_only() -> None:
    assert _parse_query(b"") == (10, None)
    assert _parse_query(b"top_k=5") == (5, None)
    assert _parse_query(b"top_k=5&camera=1&camera=2") == (5, [1, 2])
    assert _parse_query(b"camera=4") == (10, [4])
    for other in (b"top_k=ten", b"top_k=", b"top_k=-1", b"top_k=1&top_k=2", b"x=1", b"top_k", b"camera=%31",
                  b"top_k=1%20"):
        assert _parse_query(other) is None, other  # the route decides


def test_one_image_part_is_recognised_and_anything_else_is_not() -> None:
    content = b"\xff\xd8\xff\r\n--notit\r\n"  # bytes that look like a boundary of another body
    assert _single_image_part(_body(IMAGE, content), B) == ("image/jpeg", content)
    assert _single_image_part(_body(IMAGE, b"", b"--"), B) == ("image/jpeg", b"")
    no_type = b'Content-Disposition: form-data; name="image"; filename="q.jpg"'
    assert _single_image_part(_body(no_type, b"abc"), B) == ("", b"abc")
    refused = [
        _body(b'Content-Disposition: form-data; name="image"', b"abc"),  # no filename: a text field
        _body(b'Content-Disposition: form-data; name="other"; filename="q.jpg"', b"abc"),
        _body(IMAGE + b"\r\nX-Extra: 1", b"abc"),
        _body(IMAGE, b"abc", b"\r\n--" + B + b"--\r\n"),  # a second part
        _body(IMAGE, b"abc", b"--trailing"),
        b"--" + B + b"\r\n" + IMAGE + b"\r\n\r\nabc",  # no closing delimiter
        b"garbage",
    ]
    for body in refused:
        assert _single_image_part(body, B) is None, body


def _strip_timings(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "timings_ms"}


def test_the_shortcut_answers_like_the_route(make_client, ir_queries, monkeypatch) -> None:
    client = make_client()
    data = ir_queries[0].path.read_bytes()
    files = {"image": ("q.jpg", data, "image/jpeg")}
    calls = []
    real = fast_search.search_answer

    async def counting(*args, **kwargs):
        calls.append(1)
        return await real(*args, **kwargs)

    monkeypatch.setattr(fast_search, "search_answer", counting)
    fast = client.post("/search", params={"top_k": 5, "camera": [1, 2]}, files=files)
    assert calls == [1]  # answered by the shortcut
    # An extra query parameter (which FastAPI ignores) sends the same search through the route.
    routed = client.post("/search", params={"top_k": 5, "camera": [1, 2], "note": "x"}, files=files)
    assert calls == [1]
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert "x-request-id" in fast.headers
    assert _strip_timings(fast.json()) == _strip_timings(routed.json())
    assert set(fast.json()["timings_ms"]) == {"decode", "embed", "search", "total"}
    assert len(fast.json()["results"]) == 5 and {h["camera"] for h in fast.json()["results"]} <= {1, 2}
    metrics = client.get("/metrics").text
    assert 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"} 2.0' in metrics


@pytest.mark.parametrize("content, ctype, status, error", [
    (b"", "image/jpeg", 400, "empty_file"),  # found after the shortcut took it: the app's handler answers
    (b"not an image at all", "image/jpeg", 400, "not_an_image"),
    (b"GIF89a....", "image/gif", 415, "unsupported_media_type"),  # handed to the route
])
def test_errors_are_the_routes(make_client, content: bytes, ctype: str, status: int, error: str) -> None:
    client = make_client()
    response = client.post("/search", files={"image": ("q", content, ctype)})
    assert response.status_code == status and response.json()["error"] == error, response.text
    assert client.post("/search", params={"top_k": 0}, files={"image": ("q", content, ctype)}).json()["error"] \
        == "invalid_top_k"


def test_a_raw_image_body_answers_like_multipart(make_client, ir_queries) -> None:
    client = make_client()
    data = ir_queries[0].path.read_bytes()
    params = {"top_k": 5, "camera": [1, 2]}
    multipart = client.post("/search", params=params, files={"image": ("q.jpg", data, "image/jpeg")})
    for ctype in ("image/jpeg", "application/octet-stream", "image/jpeg; charset=binary"):
        raw = client.post("/search", params=params, content=data, headers={"content-type": ctype})
        assert raw.status_code == 200, raw.text
        assert _strip_timings(raw.json()) == _strip_timings(multipart.json())
        assert "x-request-id" in raw.headers
    metrics = client.get("/metrics").text
    assert 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"} 4.0' in metrics


@pytest.mark.parametrize("params, content, status, error", [
    ({}, b"", 400, "empty_file"),
    ({}, b"not an image at all", 400, "not_an_image"),
    ({"top_k": 0}, b"x", 422, "invalid_top_k"),
    ({"camera": 99}, b"x", 422, "unknown_camera"),
    ({"top_k": "ten"}, b"x", 422, "validation_error"),
    ({"note": "x"}, b"x", 422, "validation_error"),
])
def test_raw_body_errors(make_client, params, content: bytes, status: int, error: str) -> None:
    client = make_client()
    response = client.post("/search", params=params, content=content, headers={"content-type": "image/png"})
    assert response.status_code == status and response.json()["error"] == error, response.text


def test_raw_body_over_the_upload_limit_is_413(make_client, ir_queries) -> None:
    client = make_client(max_upload_bytes=1000)
    data = ir_queries[0].path.read_bytes()
    assert len(data) > 1000
    response = client.post("/search", content=data, headers={"content-type": "image/jpeg"})
    assert response.status_code == 413 and response.json()["error"] == "file_too_large"
    assert "1000 bytes" in response.json()["detail"]


def test_raw_body_is_in_the_openapi_schema(make_client) -> None:
    content = make_client().get("/openapi.json").json()["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "image/jpeg", "image/png", "application/octet-stream"} <= set(content)
