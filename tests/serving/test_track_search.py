"""Track queries, grouped results and re-ranking through the HTTP API (``POST /search/track``, ``group_by``,
``rerank``), each checked against an offline computation on the same tiny model and gallery."""

from __future__ import annotations

import numpy as np
import pytest

from index import Gallery
from serving.core.imageio import decode_image
from tests.serving.test_app import JPEG, assert_error, post_search


def _files(paths) -> list:
    return [("images", (p.name, p.read_bytes(), JPEG)) for p in paths]


def _embed(embedder, paths) -> np.ndarray:
    return embedder.embed(np.stack([decode_image(p.read_bytes(), embedder.height, embedder.width) for p in paths]))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _track(ir_queries, n: int):
    """``n`` crops of one person from one IR camera (the conftest gives two per person and camera)."""
    q = ir_queries[0]
    crops = sorted(q.path.parent.glob("*.jpg"))[:n]
    assert len(crops) == n
    return q, crops


# ----------------------------------------------------------------------------- track queries


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_track_query_equals_offline_fusion_and_search(make_client, serving_embedder, tiny_gallery, ir_queries,
                                                      fusion: str) -> None:
    client = make_client()
    _q, crops = _track(ir_queries, 3)
    response = client.post("/search/track", files=_files(crops), params={"top_k": 8, "fusion": fusion})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["track"] == {"crops": 3, "fusion": fusion}
    unit = _unit(_embed(serving_embedder, crops))
    fused = unit.mean(axis=0) if fusion == "mean" else unit.max(axis=0)
    gallery = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint, read_only=True)
    scores, ids = gallery.search(fused.astype(np.float32), 8)
    assert [h["gallery_id"] for h in body["results"]] == ids[0].tolist()
    np.testing.assert_allclose([h["score"] for h in body["results"]], scores[0], atol=1e-5)
    assert body["timings_ms"]["fuse"] is not None and body["timings_ms"]["rerank"] is None
    assert body["groups"] is None


def test_a_one_crop_track_is_the_single_crop_search(make_client, ir_queries) -> None:
    client = make_client()
    crop = ir_queries[0].path
    track = client.post("/search/track", files=_files([crop]), params={"top_k": 5}).json()["results"]
    single = post_search(client, crop.read_bytes(), top_k=5).json()["results"]
    assert [h["gallery_id"] for h in track] == [h["gallery_id"] for h in single]
    np.testing.assert_allclose([h["score"] for h in track], [h["score"] for h in single], atol=1e-5)


def test_a_track_is_embedded_in_one_micro_batch(make_client, ir_queries) -> None:
    client = make_client(max_batch_size=16)
    _, crops = _track(ir_queries, 4)
    batcher = client.app.state.runtime.batcher
    calls = batcher.calls
    assert client.post("/search/track", files=_files(crops)).status_code == 200
    assert batcher.calls == calls + 1 and batcher.batch_sizes[-1] == 4


def test_bad_tracks_get_clear_4xx(make_client, ir_queries, tiny_gallery, serving_embedder) -> None:
    client = make_client(max_track_crops=3)
    _, crops = _track(ir_queries, 4)
    body = assert_error(client.post("/search/track", data={"top_k": "5"}), 422, "empty_track")
    assert "at least one crop" in body["detail"]
    body = assert_error(client.post("/search/track", files=_files(crops)), 422, "too_many_crops")
    assert "4 crops" in body["detail"] and "at most 3" in body["detail"]
    mixed = [*_files(crops[:1]), ("images", ("broken.jpg", crops[1].read_bytes()[:200], JPEG)), *_files(crops[2:3])]
    body = assert_error(client.post("/search/track", files=mixed), 400, "truncated_image")
    assert body["detail"].startswith("image 1 (broken.jpg)"), body
    assert_error(client.post("/search/track", files=_files(crops[:2]), params={"fusion": "median"}),
                 422, "validation_error")
    assert_error(client.post("/search/track", files=_files(crops[:2]), params={"group_by": "colour"}),
                 422, "validation_error")
    body = assert_error(client.post("/search/track", files=_files(crops[:2]),
                                    params={"rerank": "true", "top_k": 10, "rerank_n": 5}), 422, "invalid_rerank_n")
    assert "between top_k (10) and 1000" in body["detail"]


def test_rerank_on_an_approximate_index_is_a_422(make_client, serving_embedder, tiny_gallery, ir_queries) -> None:
    exact = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint, read_only=True)
    ids = exact.ids()
    hnsw = Gallery.create(exact.dim, kind="hnsw", fingerprint=serving_embedder.fingerprint)
    hnsw.add(exact.vectors(ids), [{k: v for k, v in m.items() if k != "id"} for m in exact.get(ids)])
    client = make_client(gallery_obj=hnsw)
    data = ir_queries[0].path.read_bytes()
    body = assert_error(post_search(client, data, rerank="true"), 422, "rerank_needs_exact_index")
    assert "'hnsw'" in body["detail"] and "flat" in body["detail"]
    assert post_search(client, data, group_by="person").status_code == 200  # grouping still works there


# ----------------------------------------------------------------------------- grouping


def _all_scores(gallery: Gallery, query: np.ndarray, cameras=None):
    ids = gallery.ids()
    meta = gallery.get(ids)
    scores = (_unit(query) @ _unit(gallery.vectors(ids)).T).ravel()
    keep = [cameras is None or m["camera"] in cameras for m in meta]
    return [(float(s), m) for s, m, k in zip(scores, meta, keep) if k]


@pytest.mark.parametrize("endpoint", ["/search", "/search/track"])
def test_person_groups_against_brute_force(make_client, serving_embedder, tiny_gallery, ir_queries,
                                           endpoint: str) -> None:
    client = make_client()
    gallery = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint, read_only=True)
    for q in ir_queries[::4]:
        cams = [1, 4, 5] if q.camera == 3 else None
        crops = [q.path] if endpoint == "/search" else sorted(q.path.parent.glob("*.jpg"))[:2]
        files = {"image": (q.path.name, q.path.read_bytes(), JPEG)} if endpoint == "/search" else _files(crops)
        params = {"top_k": 3, "group_by": "person", **({"camera": cams} if cams else {})}
        response = client.post(endpoint, files=files, params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        query = _unit(_embed(serving_embedder, crops)).mean(axis=0)
        best: dict = {}
        for score, m in _all_scores(gallery, query, cams):
            label = m["person_label"]
            count = best.get(label, (None, 0))[1] + 1
            top = best.get(label, ((-2.0, None), 0))[0]
            best[label] = (max(top, (score, m["id"])), count)
        truth = sorted(best.items(), key=lambda kv: -kv[1][0][0])[:3]
        groups = body["groups"]
        labels = [g["person_label"] for g in groups]
        assert len(set(labels)) == len(labels) == 3  # never two groups for the same person
        assert labels == [label for label, _ in truth]
        for rank, (g, (label, ((score, best_id), count))) in enumerate(zip(groups, truth), start=1):
            assert g["rank"] == rank and g["key"] == f"person:{label}" and g["count"] == count
            assert g["score"] == pytest.approx(score, abs=1e-5)  # the group's score is its best member's
            assert g["best"]["gallery_id"] == best_id == g["members"][0]["gallery_id"]
            assert all(m["person_label"] == label for m in g["members"])
        assert [h["gallery_id"] for h in body["results"]] == [g["best"]["gallery_id"] for g in groups]


def test_camera_track_groups_and_track_ids_from_post_gallery(make_client, serving_embedder, tiny_gallery,
                                                             ir_queries) -> None:
    source = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint, read_only=True)
    ids = source.ids()
    gallery = Gallery.create(source.dim, fingerprint=serving_embedder.fingerprint)
    meta = [{k: v for k, v in m.items() if k != "id"} for m in source.get(ids)]
    for m in meta:  # two tracks per person and camera: images 1-2 and 3-4
        m["track_id"] = int(m["person_label"]) * 10 + (int(m["source"].split("/")[-1][:4]) - 1) // 2
    gallery.add(source.vectors(ids), meta)
    client = make_client(gallery_obj=gallery)
    q = ir_queries[0]
    body = post_search(client, q.path.read_bytes(), top_k=5, group_by="camera_track").json()
    keys = [(g["camera"], g["track_id"]) for g in body["groups"]]
    assert len(set(keys)) == len(keys) == 5
    for g in body["groups"]:
        assert g["key"] == f"camera_track:{g['camera']}/{g['track_id']}" and g["count"] == 2
        assert all((m["camera"], m["track_id"]) == (g["camera"], g["track_id"]) for m in g["members"])
    assert [g["score"] for g in body["groups"]] == sorted((g["score"] for g in body["groups"]), reverse=True)

    # A crop added with a track id joins that track's group.
    best = body["groups"][0]
    added = client.post("/gallery", files=_files([q.path]), data={"metadata": (
        f'[{{"camera": {best["camera"]}, "person_label": 999, "track_id": {best["track_id"]}}}]')})
    assert added.status_code == 201, added.text
    again = post_search(client, q.path.read_bytes(), top_k=5, group_by="camera_track").json()
    assert again["groups"][0]["key"] == best["key"] and again["groups"][0]["count"] == 3
    assert again["groups"][0]["best"]["gallery_id"] == added.json()["ids"][0]  # the query itself, score 1
    assert again["groups"][0]["best"]["track_id"] == best["track_id"]
    bad = client.post("/gallery", files=_files([q.path]), data={"metadata": '[{"camera": 1, "track_id": [1]}]'})
    assert_error(bad, 422, "invalid_metadata")


# ----------------------------------------------------------------------------- re-ranking


def test_rerank_equals_offline_reranking_of_the_same_neighbourhood(make_client, serving_embedder, tiny_gallery,
                                                                   ir_queries) -> None:
    from training.features import cosine_distance
    from training.protocols import RERANK_PARAMS
    from training.reranking import k_reciprocal_rerank

    client = make_client()
    gallery = Gallery.load(tiny_gallery, fingerprint=serving_embedder.fingerprint, read_only=True)
    n, k = 30, 10
    for q in ir_queries[::6]:
        response = post_search(client, q.path.read_bytes(), top_k=k, rerank="true", rerank_n=n)
        assert response.status_code == 200, response.text
        body = response.json()
        query = _embed(serving_embedder, [q.path])
        _, ids = gallery.search(query, n)
        neighbours = gallery.vectors(ids[0])
        k1 = int(min(RERANK_PARAMS["k1"], n - 1))
        dist = k_reciprocal_rerank(cosine_distance(query, neighbours), cosine_distance(query, query),
                                   cosine_distance(neighbours, neighbours), k1=k1, k2=int(min(RERANK_PARAMS["k2"], k1)),
                                   lambda_value=RERANK_PARAMS["lambda_value"])[0]
        order = np.argsort(dist, kind="stable")[:k]
        hits = body["results"]
        assert [h["gallery_id"] for h in hits] == ids[0][order].tolist()
        np.testing.assert_allclose([h["rerank_distance"] for h in hits], dist[order], atol=1e-4)
        assert body["timings_ms"]["rerank"] > 0
        assert body["timings_ms"]["total"] >= body["timings_ms"]["rerank"]


def test_rerank_with_grouping_and_tracks(make_client, ir_queries) -> None:
    client = make_client()
    _, crops = _track(ir_queries, 2)
    body = client.post("/search/track", files=_files(crops),
                       params={"top_k": 3, "group_by": "person", "rerank": "true", "rerank_n": 40}).json()
    labels = [g["person_label"] for g in body["groups"]]
    assert len(set(labels)) == len(labels) == 3
    distances = [g["best"]["rerank_distance"] for g in body["groups"]]
    assert distances == sorted(distances)  # groups follow the re-ranked order
    assert body["timings_ms"]["rerank"] > 0
