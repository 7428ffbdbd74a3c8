"""``serve --backend triton`` against a real Triton Inference Server (issue 22).

The server is the ``tritonserver`` binary bundled in the nvidia-pytriton wheel (``make triton-server``),
serving the repository ``python -m export triton`` writes, with the backend switched to Python + ONNX
Runtime (that bundle has no ONNX Runtime backend; see triton_fixture/model.py). Everything else about the
config (dims, max batch, dynamic batching, zero-batch warmup, the metadata parameters) is what the export
writes, and Triton loads it. Without the binary the tests skip and say how to get it.
"""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import numpy as np
import pytest
from ci_policy import require

sys.path.insert(0, str(Path(__file__).resolve().parent / "triton_fixture"))
from server import TritonServer, find_triton, python_backend_repository

require("tritonclient.grpc", reason="tritonclient[grpc] is not installed (requirements.txt has it)")

DIST, WHY_NOT = find_triton()
needs_triton = pytest.mark.skipif(DIST is None, reason=WHY_NOT)
JPEG = "image/jpeg"


@pytest.fixture(scope="module")
def triton_repo(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.triton import write_repository

    repo = tmp_path_factory.mktemp("triton_repo")
    write_repository(tiny_onnx, repo, kind="KIND_CPU", max_batch_size=16)
    python_backend_repository(repo)
    return repo


@pytest.fixture(scope="module")
def triton(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    assert DIST is not None
    server = TritonServer(DIST, triton_repo, tmp_path_factory.mktemp("triton_run")).start()
    yield server
    server.stop()


@needs_triton
def test_metadata_comes_from_triton(triton, serving_embedder) -> None:
    from serving.embedders import load_triton_embedder

    embedder = load_triton_embedder(triton.url, "xmreid")
    try:
        assert (embedder.height, embedder.width, embedder.dim) == (serving_embedder.height, serving_embedder.width,
                                                                   serving_embedder.dim)
        assert embedder.fingerprint == serving_embedder.fingerprint  # the ONNX file's sha256: same gallery
        assert embedder.max_batch_size == 16 and embedder.not_ready_reason is None
        # A batch larger than Triton's max_batch_size is split by Embedder.embed; rows match ONNX Runtime.
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (20, embedder.height, embedder.width, 3), dtype=np.uint8)
        np.testing.assert_allclose(embedder.embed(images), serving_embedder.embed(images), rtol=0, atol=1e-5)
    finally:
        embedder.close()


@needs_triton
def test_search_through_triton_ranks_like_onnxruntime(triton, make_client, ir_queries) -> None:
    local = make_client()
    remote = make_client(backend="triton", triton_url=triton.url, model=None)
    ready = remote.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["name"] == "triton"
    assert ready.json()["model"]["fingerprint"] == local.get("/readyz").json()["model"]["fingerprint"]
    for query in ir_queries[:6]:
        files = {"image": ("q.jpg", query.path.read_bytes(), JPEG)}
        a = local.post("/search", params={"top_k": 10}, files=files).json()["results"]
        b = remote.post("/search", params={"top_k": 10}, files=files).json()["results"]
        assert [h["gallery_id"] for h in b] == [h["gallery_id"] for h in a]
        np.testing.assert_allclose([h["score"] for h in b], [h["score"] for h in a], atol=1e-5)
    # Concurrent searches are micro-batched here and then batched again by Triton's dynamic batcher.
    jpegs = [q.path.read_bytes() for q in ir_queries[:8]]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda data: remote.post("/search", files={"image": ("q.jpg", data, JPEG)}).status_code,
                              jpegs * 2))
    assert codes == [200] * 16
    metrics = remote.get("/metrics").text
    assert 'xmreid_model_info{backend="triton"' in metrics


@needs_triton
def test_triton_going_away_is_503_and_not_ready(triton_repo, make_client, ir_queries, tmp_path) -> None:
    """Triton stops: searches answer 503 with Retry-After (never 500), /readyz says why, and a model call
    that finds Triton gone raises ModelUnavailable (the 503 the API maps it to)."""
    from serving.embedders import ModelUnavailable
    from serving.embedders.triton_embedder import TritonEmbedder

    assert DIST is not None
    server = TritonServer(DIST, triton_repo, tmp_path).start()
    direct = TritonEmbedder(server.url, poll_s=0)  # no poller: its next call is what finds Triton gone
    try:
        client = make_client(backend="triton", triton_url=server.url, model=None)
        files = {"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)}
        assert client.post("/search", files=files).status_code == 200
    finally:
        server.stop()
    r = client.post("/search", files=files)
    # "model_unavailable" when the call found Triton gone, "not_ready" when the poller noticed first.
    assert r.status_code == 503 and r.json()["error"] in {"model_unavailable", "not_ready"}, r.text
    assert r.headers["retry-after"] == "1"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "Triton" in ready.json()["detail"]
    images = np.zeros((1, direct.height, direct.width, 3), np.uint8)
    with pytest.raises(ModelUnavailable, match="did not answer"):
        direct.embed(images)
    assert direct.not_ready_reason is not None and "unreachable" in direct.not_ready_reason
    direct.close()


def test_user_errors_are_one_sentence(tmp_path) -> None:
    from serving.embedders.triton_embedder import metadata_from_config, parse_url
    from xmreid.errors import UserError

    assert parse_url("grpc://triton:8001/") == "triton:8001"
    with pytest.raises(UserError, match="speaks gRPC.*triton:8001"):
        parse_url("http://triton:8000")
    with pytest.raises(UserError, match="must be host:port"):
        parse_url("triton")
    good = {"max_batch_size": 8, "input": [{"name": "images", "data_type": "TYPE_UINT8", "dims": ["3", "96", "32"]}],
            "output": [{"name": "descriptors", "data_type": "TYPE_FP32", "dims": ["1536"]}],
            "parameters": {"fingerprint": {"string_value": "a" * 64}, "parts": {"string_value": "6"}}}
    meta, _fingerprint, max_batch = metadata_from_config(good, "m")
    assert (meta.height, meta.width, meta.descriptor_dim, meta.parts, max_batch) == (96, 32, 1536, 6, 8)
    with pytest.raises(UserError, match="no 'fingerprint' parameter"):
        metadata_from_config({**good, "parameters": {}}, "m")
    with pytest.raises(UserError, match="no input named 'images'"):
        metadata_from_config({**good, "input": [{"name": "x"}]}, "m")


def test_unreachable_triton_is_a_clear_start_error(tmp_path) -> None:
    """Nothing listens on the port: serve's loader says so in one sentence (exit 1, no traceback)."""
    from serving.embedders import load_triton_embedder
    from xmreid.errors import UserError

    with pytest.raises(UserError, match=r"cannot use Triton model 'xmreid' at 127\.0\.0\.1:9: "):
        load_triton_embedder("127.0.0.1:9", timeout_s=2.0)
