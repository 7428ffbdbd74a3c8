"""The retrieval API through FastAPI's TestClient, on the tiny trained model and its synthetic gallery.

Reference for every ranking assertion: the same files embedded offline with the same embedder and decoder,
searched in-process with ``index.Gallery``; and SYSU-MM01's ``eval_sysu`` on cosine distances.
"""

from __future__ import annotations

import json
import logging
import re

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from index import Gallery
from serving.core.imageio import decode_image

JPEG = "image/jpeg"


def post_search(client: TestClient, data: bytes, name: str = "q.jpg", ctype: str = JPEG, **params):
    return client.post("/search", files={"image": (name, data, ctype)}, params=params)


def offline_search(embedder, gallery: Gallery, data: bytes, k: int, cameras=None):
    vector = embedder.embed(decode_image(data, embedder.height, embedder.width)[None])
    scores, ids = gallery.search(vector, k, cameras=cameras)
    keep = ids[0] >= 0
    return ids[0][keep].tolist(), scores[0][keep]


def assert_error(response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value from Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, flags=re.M)
    return float(found.group(1)) if found else 0.0


# ----------------------------------------------------------------------------- rankings


def test_search_equals_offline_ranking_and_eval_sysu_rank1(make_client, serving_embedder, tiny_gallery,
                                                           sysu_root, ir_queries) -> None:
    from training.data.images import read_image
    from training.evaluation import eval_sysu
    from training.features import cosine_distance

    client = make_client()
    gallery = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint)
    emb = serving_embedder
    k = 10
    api_rank1, q_feats = [], []
    for q in ir_queries:
        data = q.path.read_bytes()
        # Same pixels as offline evaluation's reader (docs/contracts.md, "Images").
        assert np.array_equal(decode_image(data, emb.height, emb.width), read_image(q.path, emb.height, emb.width))
        # SYSU-MM01 protocol: a camera-3 query is not matched against camera 2 (same location).
        cams = [1, 4, 5] if q.camera == 3 else None
        response = post_search(client, data, top_k=k, **({"camera": cams} if cams else {}))
        assert response.status_code == 200, response.text
        hits = response.json()["results"]
        ids, scores = offline_search(emb, gallery, data, k, cams)
        assert [h["gallery_id"] for h in hits] == ids  # exactly the in-process ranking
        np.testing.assert_allclose([h["score"] for h in hits], scores, rtol=0, atol=1e-6)
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert all(h["camera"] != 2 for h in hits) or cams is None
        api_rank1.append(hits[0]["person_label"] == q.pid)
        q_feats.append(emb.embed(read_image(q.path, emb.height, emb.width)[None])[0])

    # Offline evaluation over the whole gallery: embed every gallery crop from its source file.
    g_ids = np.asarray(sorted(int(i) for i in range(gallery.stats()["next_id"]) if i in gallery))
    meta = gallery.get(g_ids)
    g_feats = emb.embed(np.stack([read_image(sysu_root / m["source"], emb.height, emb.width) for m in meta]))
    distmat = cosine_distance(np.stack(q_feats), g_feats)
    cmc, _, _ = eval_sysu(distmat, np.array([q.pid for q in ir_queries]), np.array([m["person_label"] for m in meta]),
                          np.array([q.camera for q in ir_queries]), np.array([m["camera"] for m in meta]))
    assert float(np.mean(api_rank1)) == pytest.approx(cmc[0], abs=1e-9)


def test_batch_search_equals_single_searches(make_client, ir_queries) -> None:
    client = make_client()
    chosen = ir_queries[::3][:8]
    singles = []
    for q in chosen:
        response = post_search(client, q.path.read_bytes(), top_k=5)
        assert response.status_code == 200
        singles.append(response.json()["results"])
    files = [("images", (q.path.name, q.path.read_bytes(), JPEG)) for q in chosen]
    response = client.post("/search/batch", files=files, params={"top_k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["items"]] == list(range(len(chosen)))
    assert [item["filename"] for item in body["items"]] == [q.path.name for q in chosen]
    for item, single in zip(body["items"], singles):
        batch_scores = np.array([h["score"] for h in item["results"]])
        single_scores = np.array([h["score"] for h in single])
        # One model call on 8 images vs 8 calls on one: float sums may round differently (1e-5).
        np.testing.assert_allclose(batch_scores, single_scores, atol=1e-5)
        for pos, (a, b) in enumerate(zip(item["results"], single)):
            if a["gallery_id"] != b["gallery_id"]:  # only allowed between tied scores
                assert abs(single_scores[pos] - single_scores[min(pos + 1, len(single) - 1)]) < 1e-5 or \
                       abs(single_scores[pos] - single_scores[max(pos - 1, 0)]) < 1e-5


def test_batch_search_decodes_embeds_and_searches_with_the_micro_batch(make_client, ir_queries, monkeypatch) -> None:
    """POST /search/batch takes /search's path: its crops are decoded in the model thread with their batch (no
    decode-pool hop) and searched there, one model call for the request's four crops."""
    client = make_client()
    runtime = client.app.state.runtime

    async def no_pool(data: bytes):
        raise AssertionError("a crop went through the decode pool")

    monkeypatch.setattr(runtime, "decode", no_pool)
    calls = runtime.batcher.calls
    files = [("images", (q.path.name, q.path.read_bytes(), JPEG)) for q in ir_queries[:4]]
    response = client.post("/search/batch", files=files, params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [len(item["results"]) for item in body["items"]] == [3, 3, 3, 3]
    assert runtime.batcher.calls == calls + 1 and runtime.batcher.batch_sizes[-1] == 4
    t = body["timings_ms"]
    assert t["total"] == pytest.approx(t["decode"] + t["embed"] + t["search"], abs=0.01)


def test_a_big_upload_is_decoded_in_the_pool_first_on_both_search_routes(make_client, ir_queries,
                                                                         monkeypatch) -> None:
    """Files over BATCH_DECODE_BYTES are decoded in the decode pool before they join a batch (they could hold up
    everyone else's), on /search and /search/batch alike; a broken big file is still a 400 naming it."""
    import cv2

    from serving.runtime.state import BATCH_DECODE_BYTES

    client = make_client()
    runtime = client.app.state.runtime
    noise = np.random.default_rng(0).integers(0, 256, (400, 300, 3), dtype=np.uint8)
    big = cv2.imencode(".png", noise)[1].tobytes()
    assert len(big) > BATCH_DECODE_BYTES
    pooled: list[int] = []
    decode = runtime.decode

    async def counted(data: bytes):
        pooled.append(len(data))
        return await decode(data)

    monkeypatch.setattr(runtime, "decode", counted)
    assert post_search(client, big, top_k=2, ctype="image/png").status_code == 200
    small = ir_queries[0].path.read_bytes()
    files = [("images", ("q.jpg", small, JPEG)), ("images", ("big.png", big, "image/png"))]
    response = client.post("/search/batch", files=files, params={"top_k": 2})
    assert response.status_code == 200, response.text
    assert pooled == [len(big), len(big)]  # only the big file, once per route
    files = [("images", ("q.jpg", small, JPEG)), ("images", ("cut.png", big[: len(big) // 2], "image/png"))]
    body = assert_error(client.post("/search/batch", files=files), 400, "truncated_image")
    assert body["detail"].startswith("image 1 (cut.png)")


def test_a_small_file_of_many_pixels_is_decoded_in_the_pool_not_the_model_thread(make_client, ir_queries,
                                                                               monkeypatch) -> None:
    """A few-KB PNG that decompresses to megapixels (a bomb inside the pixel budget) is decoded in the decode
    pool on /search and /search/batch, so it cannot hold up the micro-batch of every other search; an ordinary
    crop still goes straight to the model thread."""
    import cv2

    from serving.runtime.state import BATCH_DECODE_BYTES, BATCH_DECODE_PIXELS, decode_in_pool

    client = make_client()
    runtime = client.app.state.runtime
    bomb = cv2.imencode(".png", np.zeros((2000, 1500, 3), np.uint8))[1].tobytes()
    assert len(bomb) < BATCH_DECODE_BYTES // 8 and BATCH_DECODE_PIXELS < 2000 * 1500
    small = ir_queries[0].path.read_bytes()
    assert decode_in_pool(bomb, runtime.limits) and not decode_in_pool(small, runtime.limits)
    assert not decode_in_pool(b"not an image", runtime.limits)  # refused in the model thread at the header
    pooled: list[int] = []
    decode = runtime.decode

    async def counted(data: bytes):
        pooled.append(len(data))
        return await decode(data)

    monkeypatch.setattr(runtime, "decode", counted)
    assert post_search(client, bomb, top_k=2, ctype="image/png").status_code == 200
    assert post_search(client, small, top_k=2).status_code == 200
    files = [("images", ("q.jpg", small, JPEG)), ("images", ("bomb.png", bomb, "image/png"))]
    assert client.post("/search/batch", files=files, params={"top_k": 2}).status_code == 200
    assert pooled == [len(bomb), len(bomb)]


def test_gallery_add_then_delete_changes_results(make_client, gallery_copy, serving_embedder, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=True, api_key="s3cret", open_search=True)
    key = {"X-API-Key": "s3cret"}
    q = ir_queries[0]
    data = q.path.read_bytes()
    before = post_search(client, data, top_k=5).json()["results"]

    meta = [{"camera": 3, "person_label": 4242, "source": "uploads/query.jpg", "timestamp": 1_700_000_000,
             "extra": {"note": "added by test"}}]
    response = client.post("/gallery", files=[("images", (q.path.name, data, JPEG))],
                           data={"metadata": json.dumps(meta)}, headers=key)
    assert response.status_code == 201, response.text
    (new_id,) = response.json()["ids"]
    size_after_add = response.json()["size"]

    top = post_search(client, data, top_k=5).json()["results"]
    assert top[0]["gallery_id"] == new_id and top[0]["person_label"] == 4242 and top[0]["camera"] == 3
    assert top[0]["score"] == pytest.approx(1.0, abs=1e-6)  # the crop matches its own descriptor
    assert top[0]["score"] > before[0]["score"]  # better than anything the RGB gallery had
    assert [h["gallery_id"] for h in top[1:]] == [h["gallery_id"] for h in before[:4]]
    on_disk = Gallery.load(gallery_copy, fingerprint=serving_embedder.fingerprint)  # persisted before answering
    assert new_id in on_disk and len(on_disk) == size_after_add
    assert client.get("/gallery/stats").json()["cameras"]["3"] == 1
    # The added camera is now a valid filter.
    assert post_search(client, data, top_k=1, camera=3).json()["results"][0]["gallery_id"] == new_id

    response = client.delete(f"/gallery/{new_id}", headers=key)
    assert response.status_code == 200 and response.json() == {"deleted": new_id, "size": size_after_add - 1}
    after = post_search(client, data, top_k=5).json()["results"]
    assert new_id not in [h["gallery_id"] for h in after]
    assert [h["gallery_id"] for h in after] == [h["gallery_id"] for h in before]
    assert new_id not in Gallery.load(gallery_copy, fingerprint=serving_embedder.fingerprint)
    assert_error(client.delete(f"/gallery/{new_id}", headers=key), 404, "not_found")


# ----------------------------------------------------------------------------- bad input


def _png(height: int, width: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 128, np.uint8))
    assert ok
    return buf.tobytes()


def test_bad_uploads_get_4xx_json(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    cases = [
        (b"", JPEG, 400, "empty_file"),
        (b"this is plain text, not an image", JPEG, 400, "not_an_image"),
        (jpeg[: len(jpeg) // 2], JPEG, 400, "truncated_image"),
        (jpeg, "text/plain", 415, "unsupported_media_type"),
        (b"GIF89a" + bytes(64), "application/octet-stream", 415, "unsupported_format"),
    ]
    for data, ctype, status, error in cases:
        assert_error(post_search(client, data, ctype=ctype), status, error)
    assert_error(client.post("/search"), 422, "validation_error")  # no file at all
    assert "image" in client.post("/search").json()["detail"]
    assert_error(client.post("/search", data={"image": "text, not a file"}), 422, "validation_error")
    malformed = client.post("/search", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=z"})
    assert_error(malformed, 400, "bad_request")


def test_bad_parameters_get_4xx_json(make_client, ir_queries) -> None:
    client = make_client()
    jpeg = ir_queries[0].path.read_bytes()
    for top_k in (0, -3, 101, 10**9):
        body = assert_error(post_search(client, jpeg, top_k=top_k), 422, "invalid_top_k")
        assert "between 1 and 100" in body["detail"]
    assert_error(post_search(client, jpeg, top_k="ten"), 422, "validation_error")
    body = assert_error(post_search(client, jpeg, camera=[1, 9]), 422, "unknown_camera")
    assert "1, 2, 4, 5" in body["detail"]  # names the valid cameras
    assert_error(client.delete("/gallery/not-a-number"), 422, "validation_error")
    files = [("images", ("a.jpg", jpeg, JPEG))]
    assert_error(client.post("/gallery", files=files, data={"metadata": "not json"}), 422, "invalid_metadata")
    assert_error(client.post("/gallery", files=files, data={"metadata": "[]"}), 422, "invalid_metadata")
    body = assert_error(client.post("/gallery", files=files, data={"metadata": '[{"person_label": 1}]'}), 422,
                        "invalid_metadata")
    assert "camera" in body["detail"]
    assert_error(client.post("/gallery", files=files, data={"metadata": '[{"camera": 1, "bogus": 2}]'}), 422,
                 "invalid_metadata")


def test_size_limits(make_client, ir_queries) -> None:
    jpeg = ir_queries[0].path.read_bytes()
    height, width = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    client = make_client(max_upload_bytes=len(jpeg) + 100, max_pixels=height * width, max_images_per_request=2)
    assert post_search(client, jpeg).status_code == 200  # within every limit
    # One file over the per-file limit (the body is still under the request limit).
    big = jpeg + bytes(200)
    assert_error(post_search(client, big), 413, "file_too_large")
    # A declared body over the request limit: refused from Content-Length.
    huge = bytes(3 * 1024 * 1024)
    assert_error(post_search(client, huge), 413, "request_too_large")

    # A chunked body (no Content-Length) is cut off while streaming.
    def chunks():
        for _ in range(40):
            yield bytes(64 * 1024)

    response = client.post("/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "request_too_large")
    # A decompression-bomb-like image: small file, too many pixels.
    body = assert_error(post_search(client, _png(height + 1, width), ctype="image/png"), 422, "too_many_pixels")
    assert f"{width}x{height + 1}" in body["detail"]
    files = [("images", ("a.jpg", jpeg, JPEG))] * 3
    assert_error(client.post("/search/batch", files=files), 422, "too_many_images")
    # A bad image inside a batch names its position.
    files = [("images", ("a.jpg", jpeg, JPEG)), ("images", ("b.jpg", b"nope", JPEG))]
    body = assert_error(client.post("/search/batch", files=files), 400, "not_an_image")
    assert body["detail"].startswith("image 1 (b.jpg)")


def test_body_limit_is_enforced_before_reading() -> None:
    """The middleware answers 413 from Content-Length without calling ``receive`` even once."""
    import asyncio

    from serving.api.middleware import RequestContext
    from serving.runtime.metrics import Metrics

    async def app(scope, receive, send):  # pragma: no cover - must not be reached
        raise AssertionError("the app must not run")

    async def receive():
        raise AssertionError("the body must not be read")

    sent = []

    async def send(message):
        sent.append(message)

    middleware = RequestContext(app, metrics=Metrics(), body_limit=lambda method, path: 1000)
    scope = {"type": "http", "method": "POST", "path": "/search",
             "headers": [(b"content-length", str(100 * 1024 * 1024).encode())]}
    asyncio.run(middleware(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"] == "request_too_large"


def test_empty_gallery_is_409(make_client, serving_embedder, tmp_path, ir_queries) -> None:
    empty = Gallery.create(serving_embedder.dim, fingerprint=serving_embedder.fingerprint)
    empty.save(tmp_path / "empty")
    client = make_client(gallery=tmp_path / "empty")
    assert_error(post_search(client, ir_queries[0].path.read_bytes()), 409, "empty_gallery")
    assert client.get("/gallery/stats").json()["size"] == 0


def test_missing_gallery_can_start_empty(make_client, tmp_path, ir_queries) -> None:
    client = make_client(gallery=tmp_path / "new", create_gallery=True, save_on_mutation=True)
    jpeg = ir_queries[0].path.read_bytes()
    assert_error(post_search(client, jpeg), 409, "empty_gallery")
    response = client.post("/gallery", files=[("images", ("a.jpg", jpeg, JPEG))],
                           data={"metadata": json.dumps([{"camera": 1}])})
    assert response.status_code == 201 and response.json() == {"ids": [0], "size": 1}
    assert (tmp_path / "new" / "manifest.json").is_file()
    assert post_search(client, jpeg, top_k=3).json()["results"][0]["gallery_id"] == 0


# ----------------------------------------------------------------------------- security, ops


def test_api_key_is_enforced_and_never_logged(make_client, gallery_copy, ir_queries, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(gallery=gallery_copy, api_key="s3cret-key")
    jpeg = ir_queries[0].path.read_bytes()

    def add(headers):
        return client.post("/gallery", files=[("images", ("a.jpg", jpeg, JPEG))],
                           data={"metadata": json.dumps([{"camera": 1}])}, headers=headers)

    response = assert_error(add({}), 401, "missing_api_key")
    assert_error(add({"X-API-Key": "wrong"}), 403, "invalid_api_key")
    assert_error(add({"X-API-Key": "s3cret-key-and-more"}), 403, "invalid_api_key")
    response = add({"X-API-Key": "s3cret-key"})
    assert response.status_code == 201
    new_id = response.json()["ids"][0]
    assert_error(client.delete(f"/gallery/{new_id}"), 401, "missing_api_key")
    assert_error(client.delete(f"/gallery/{new_id}", headers={"X-API-Key": "nope"}), 403, "invalid_api_key")
    assert client.delete(f"/gallery/{new_id}", headers={"X-API-Key": "s3cret-key"}).status_code == 200
    # With a key configured, searching needs one too (the legacy key is an admin key, which may search).
    assert_error(post_search(client, jpeg), 401, "missing_api_key")
    assert_error(client.get("/gallery/stats"), 401, "missing_api_key")
    assert client.post("/search", files={"image": ("q.jpg", jpeg, JPEG)},
                       headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert "s3cret-key" not in caplog.text


def test_health_readiness_and_metrics(make_client, tiny_onnx, tiny_gallery, ir_queries) -> None:
    from serving.app import create_app
    from serving.core.config import Settings

    # Before the lifespan has run (nothing loaded): alive but not ready, and searches answer 503.
    cold = TestClient(create_app(Settings(model=tiny_onnx, gallery=tiny_gallery)), base_url="http://localhost")
    assert cold.get("/healthz").json() == {"status": "ok"}
    assert_error(cold.get("/readyz"), 503, "not_ready")
    assert_error(post_search(cold, ir_queries[0].path.read_bytes()), 503, "not_ready")

    client = make_client(max_batch_size=1)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    gallery_size = ready.json()["gallery_size"]
    n = 5
    for q in ir_queries[:n]:
        assert post_search(client, q.path.read_bytes()).status_code == 200
    assert post_search(client, b"", top_k=3).status_code == 400
    text = client.get("/metrics").text
    assert metric(text, "xmreid_http_requests_total", endpoint="/search", method="POST", status="200") == n
    assert metric(text, "xmreid_http_requests_total", endpoint="/search", method="POST", status="400") == 1
    assert metric(text, "xmreid_http_request_duration_seconds_count", endpoint="/search", method="POST",
                  status="200") == n
    assert metric(text, "xmreid_model_calls_total") == n  # batching disabled: one call per request
    assert metric(text, "xmreid_model_batch_size_count") == n
    assert metric(text, "xmreid_gallery_size") == gallery_size
    assert metric(text, "xmreid_http_requests_total", endpoint="/readyz", method="GET", status="200") == 1


def test_internal_error_is_500_with_request_id_and_the_worker_survives(make_client, serving_embedder,
                                                                       ir_queries, caplog) -> None:
    class Flaky:
        """The real embedder, except that it fails while ``broken`` is set."""

        def __init__(self, inner) -> None:
            self.inner, self.broken = inner, True
            for name in ("name", "height", "width", "dim", "fingerprint", "thread_safe"):
                setattr(self, name, getattr(inner, name))

        def embed(self, images):
            if self.broken:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return self.inner.embed(images)

    flaky = Flaky(serving_embedder)
    client = make_client(embedder=flaky)
    jpeg = ir_queries[0].path.read_bytes()
    caplog.set_level(logging.ERROR)
    response = post_search(client, jpeg)
    body = assert_error(response, 500, "internal_error")
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["request_id"] in caplog.text and "Traceback" in caplog.text
    assert "illegal memory" not in body["detail"]  # internals stay in the log
    flaky.broken = False
    assert post_search(client, jpeg).status_code == 200
    assert client.get("/readyz").status_code == 200
    # A client-supplied request id is echoed; a malformed one is replaced.
    assert client.get("/healthz", headers={"X-Request-ID": "trace-42"}).headers["X-Request-ID"] == "trace-42"
    assert client.get("/healthz", headers={"X-Request-ID": "bad id\r\n"}).headers["X-Request-ID"] != "bad id"


def test_openapi_documents_every_field_and_error(make_client) -> None:
    schema = make_client().get("/openapi.json").json()
    for name, component in schema["components"]["schemas"].items():
        if name in {"HTTPValidationError", "ValidationError"}:
            continue
        for prop, spec in component.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{prop} has no description"
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            for param in op.get("parameters", []):
                assert param.get("description"), f"{method} {path} parameter {param['name']}"
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), f"{method} {path} {status} documents {ref}"
            assert "500" in op["responses"], f"{method} {path} does not document 500"
