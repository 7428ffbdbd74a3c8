"""``POST /search`` with a raw image body answers exactly what the multipart route answers, through the same path."""

from __future__ import annotations

import pytest

from serving.api.raw_search import parse_query as _parse_query
from serving.api.uploads import RAW_IMAGE_TYPES


def test_query_strings_of_plain_integers_only() -> None:
    assert _parse_query(b"") == (10, None)
    assert _parse_query(b"top_k=5") == (5, None)
    assert _parse_query(b"top_k=5&camera=1&camera=2") == (5, [1, 2])
    assert _parse_query(b"camera=4") == (10, [4])
    for other in (b"top_k=ten", b"top_k=", b"top_k=-1", b"top_k=1&top_k=2", b"x=1", b"top_k", b"camera=%31",
                  b"top_k=1%20"):
        assert _parse_query(other) is None, other  # a 422: only plain integers


def _strip_timings(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "timings_ms"}


def test_plain_and_extra_parameters_answer_alike(make_client, ir_queries) -> None:
    client = make_client()
    data = ir_queries[0].path.read_bytes()
    files = {"image": ("q.jpg", data, "image/jpeg")}
    plain = client.post("/search", params={"top_k": 5, "camera": [1, 2]}, files=files)
    # An extra query parameter (which FastAPI ignores) changes nothing.
    extra = client.post("/search", params={"top_k": 5, "camera": [1, 2], "note": "x"}, files=files)
    assert plain.status_code == extra.status_code == 200
    assert plain.headers["content-type"] == extra.headers["content-type"] == "application/json"
    assert "x-request-id" in plain.headers
    assert _strip_timings(plain.json()) == _strip_timings(extra.json())
    assert set(plain.json()["timings_ms"]) == {"decode", "embed", "search", "total"}
    assert len(plain.json()["results"]) == 5 and {h["camera"] for h in plain.json()["results"]} <= {1, 2}
    metrics = client.get("/metrics").text
    assert 'xmreid_http_requests_total{endpoint="/search",method="POST",status="200"} 2.0' in metrics


@pytest.mark.parametrize("content, ctype, status, error", [
    (b"", "image/jpeg", 400, "empty_file"),
    (b"not an image at all", "image/jpeg", 400, "not_an_image"),
    (b"GIF89a....", "image/gif", 415, "unsupported_media_type"),
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
    assert set(content) == {"multipart/form-data", *RAW_IMAGE_TYPES}  # exactly the types the raw path accepts


@pytest.mark.parametrize("ctype", RAW_IMAGE_TYPES)
def test_every_documented_raw_type_is_accepted(make_client, ir_queries, ctype: str) -> None:
    client = make_client()
    response = client.post("/search", params={"top_k": 3}, content=ir_queries[0].path.read_bytes(),
                           headers={"content-type": ctype})
    assert response.status_code == 200 and len(response.json()["results"]) == 3, response.text
