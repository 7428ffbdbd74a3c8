"""``GET /gallery/tracks``: the gallery's tracks on a time line, behind the search permission, audited."""

from __future__ import annotations

import json

JPEG = "image/jpeg"


def _add_tracks(client, ir_queries, headers=None) -> None:
    data = ir_queries[0].path.read_bytes()
    meta = [{"camera": 1, "track_id": "cam1-x-1", "timestamp": 1_714_550_400 + s} for s in (0, 30)]
    meta += [{"camera": 2, "track_id": "cam2-x-4", "timestamp": 1_714_550_390}]
    files = [("images", (f"{i}.jpg", data, JPEG)) for i in range(len(meta))]
    response = client.post("/gallery", files=files, data={"metadata": json.dumps(meta)}, headers=headers or {})
    assert response.status_code == 201, response.text


def test_tracks_list_first_and_last_seen_earliest_first(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy)
    before = client.get("/gallery/tracks").json()["total"]
    _add_tracks(client, ir_queries)
    body = client.get("/gallery/tracks", params={"camera": [1, 2]}).json()
    ours = [t for t in body["tracks"] if str(t["track_id"]).startswith(("cam1-x", "cam2-x"))]
    assert [(t["camera"], t["track_id"]) for t in ours] == [(2, "cam2-x-4"), (1, "cam1-x-1")]
    assert ours[1]["first_seen"] == "2024-05-01T08:00:00Z" and ours[1]["last_seen"] == "2024-05-01T08:00:30Z"
    assert ours[1]["items"] == 2 and ours[0]["items"] == 1
    assert client.get("/gallery/tracks").json()["total"] == before + 2
    limited = client.get("/gallery/tracks", params={"limit": 1}).json()
    assert len(limited["tracks"]) == 1 and limited["total"] == before + 2
    assert client.get("/gallery/tracks", params={"limit": 0}).status_code == 422
    unknown = client.get("/gallery/tracks", params={"camera": [1, 2**70]})
    assert unknown.status_code == 422 and unknown.json()["error"] == "unknown_camera"


def test_tracks_need_a_search_key_and_each_view_is_audited(make_client, gallery_copy, ir_queries, tmp_path) -> None:
    audit = tmp_path / "audit.log"
    client = make_client(gallery=gallery_copy, api_key="admin-key", audit_log=audit)
    _add_tracks(client, ir_queries, headers={"X-API-Key": "admin-key"})
    assert client.get("/gallery/tracks").status_code == 401
    assert client.get("/gallery/tracks", headers={"X-API-Key": "wrong"}).status_code == 403
    answer = client.get("/gallery/tracks", headers={"X-API-Key": "admin-key"})
    assert answer.status_code == 200
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    viewed = [r for r in records if r["endpoint"] == "GET /gallery/tracks"]
    assert len(viewed) == 1 and viewed[0]["key"] == "api-key"
    assert [1, "cam1-x-1"] in viewed[0]["tracks"] and [2, "cam2-x-4"] in viewed[0]["tracks"]
