"""Keys with roles on every route, refusals before the body is read, and the audit trail of each answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.api.access import AccessControl, AccessPolicy, required_permission
from serving.api.keys import KeyRing, hash_key
from serving.core import audit_log
from serving.core.audit_log import AuditError

JPEG = "image/jpeg"
REPO = Path(__file__).resolve().parents[2]
SEARCH_KEY, ADMIN_KEY = "kiosk-secret-1", "admin-secret-2"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text(f"kiosk:search:{hash_key(SEARCH_KEY)}\nalice:admin:{hash_key(ADMIN_KEY)}\n")
    return path


def _search(client, jpeg: bytes, key: str | None = None, **params):
    headers = {"X-API-Key": key} if key else {}
    return client.post("/search", files={"image": ("q.jpg", jpeg, JPEG)}, params=params, headers=headers)


def _add(client, jpeg: bytes, key: str | None = None):
    headers = {"X-API-Key": key} if key else {}
    return client.post("/gallery", files=[("images", ("a.jpg", jpeg, JPEG))],
                       data={"metadata": json.dumps([{"camera": 1}])}, headers=headers)


def test_each_route_needs_its_permission() -> None:
    assert required_permission("POST", "/search") == "search"
    assert required_permission("POST", "/search/batch") == "search"
    assert required_permission("POST", "/search/track") == "search"
    assert required_permission("GET", "/gallery/12/thumbnail") == "search"
    assert required_permission("GET", "/gallery/stats") == "search"
    assert required_permission("GET", "/gallery/tracks") == "search"
    assert required_permission("POST", "/gallery") == "admin"
    assert required_permission("POST", "/gallery/reload") == "admin"
    assert required_permission("DELETE", "/gallery/7") == "admin"
    for method, path in (("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/"),
                         ("GET", "/gallery"), ("GET", "/docs"), ("GET", "/openapi.json")):
        assert required_permission(method, path) is None, path


def test_roles_on_the_live_app(make_client, gallery_copy, ir_queries, keys_file) -> None:
    client = make_client(gallery=gallery_copy, api_keys_file=keys_file, allow_unauthenticated_changes=False)
    jpeg = ir_queries[0].path.read_bytes()
    missing = _search(client, jpeg)
    assert missing.status_code == 401 and missing.json()["error"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "ApiKey"
    assert _search(client, jpeg, "nope").json()["error"] == "invalid_api_key"
    assert _search(client, jpeg, SEARCH_KEY).status_code == 200
    assert _search(client, jpeg, ADMIN_KEY).status_code == 200
    assert client.get("/gallery/stats", headers={"X-API-Key": SEARCH_KEY}).status_code == 200
    assert client.get("/gallery/stats").status_code == 401
    refused = _add(client, jpeg, SEARCH_KEY)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_role"
    assert "'kiosk'" in refused.json()["detail"] and "'admin'" in refused.json()["detail"]
    assert _add(client, jpeg, ADMIN_KEY).status_code == 201
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_without_keys_searches_are_open_and_changes_refused(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, allow_unauthenticated_changes=False)
    jpeg = ir_queries[0].path.read_bytes()
    assert _search(client, jpeg).status_code == 200
    refused = _add(client, jpeg)
    assert refused.status_code == 403 and refused.json()["error"] == "changes_need_a_key"
    assert "--allow-unauthenticated-changes" in refused.json()["detail"]
    assert client.delete("/gallery/0").json()["error"] == "changes_need_a_key"
    allowing = make_client(gallery=gallery_copy, allow_unauthenticated_changes=True)
    assert _add(allowing, jpeg).status_code == 201


def test_open_search_is_a_kiosk_beside_keys(make_client, gallery_copy, ir_queries, keys_file) -> None:
    client = make_client(gallery=gallery_copy, api_keys_file=keys_file, open_search=True)
    jpeg = ir_queries[0].path.read_bytes()
    assert _search(client, jpeg).status_code == 200
    assert _search(client, jpeg, "wrong").status_code == 403  # a key that is sent must still be right
    assert _add(client, jpeg).status_code == 401  # changes still need an admin key


def test_a_refusal_reads_no_body() -> None:
    """The middleware answers from the headers: neither ``receive`` nor the app behind it is called."""
    called = {"app": 0, "receive": 0}

    async def app(scope, receive, send) -> None:
        called["app"] += 1

    async def receive():
        called["receive"] += 1
        return {"type": "http.request", "body": b"x" * 1000, "more_body": True}

    sent = []

    async def send(message) -> None:
        sent.append(message)

    ring = KeyRing.load(None, legacy_key="the-key")
    middleware = AccessControl(app, policy=AccessPolicy(ring))
    for headers, status in (([], 401), ([(b"x-api-key", b"wrong")], 403)):
        scope = {"type": "http", "method": "POST", "path": "/gallery", "headers": headers}
        sent.clear()
        asyncio.run(middleware(scope, receive, send))
        assert sent[0]["status"] == status
    assert called == {"app": 0, "receive": 0}
    scope = {"type": "http", "method": "POST", "path": "/gallery", "headers": [(b"x-api-key", b"the-key")]}
    asyncio.run(middleware(scope, receive, send))
    assert called["app"] == 1 and scope["state"]["api_key_name"] == "api-key"


def test_a_bad_keys_file_stops_the_app(make_client, keys_file) -> None:
    from xmreid.errors import UserError

    keys_file.write_text("alice:root:" + "0" * 64 + "\n")
    with pytest.raises(UserError, match="unknown role 'root'"):
        make_client(api_keys_file=keys_file)


def _verify_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving", "audit", "verify", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_every_search_and_thumbnail_is_audited_before_the_answer(make_client, gallery_copy, ir_queries, keys_file,
                                                                 sysu_root, tmp_path) -> None:
    log = tmp_path / "audit" / "audit.log"
    client = make_client(gallery=gallery_copy, api_keys_file=keys_file, audit_log=log, image_roots=[sysu_root],
                         save_on_mutation=True)
    crops = [q.path.read_bytes() for q in ir_queries[:2]]
    one = _search(client, crops[0], SEARCH_KEY, top_k=3)
    assert one.status_code == 200
    batch = client.post("/search/batch", files=[("images", ("a.jpg", c, JPEG)) for c in crops],
                        headers={"X-API-Key": SEARCH_KEY})
    track = client.post("/search/track", files=[("images", ("a.jpg", c, JPEG)) for c in crops],
                        params={"group_by": "person"}, headers={"X-API-Key": ADMIN_KEY})
    raw = client.post("/search", content=crops[1], headers={"Content-Type": JPEG, "X-API-Key": SEARCH_KEY})
    first_id = one.json()["results"][0]["gallery_id"]
    thumb = client.get(f"/gallery/{first_id}/thumbnail", headers={"X-API-Key": SEARCH_KEY})
    added = _add(client, crops[0], ADMIN_KEY)
    assert [r.status_code for r in (batch, track, raw, thumb, added)] == [200, 200, 200, 200, 201]
    _search(client, crops[0])  # refused (401): not a search, not audited

    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["endpoint"] for r in records] == ["POST /search", "POST /search/batch", "POST /search/track",
                                                "POST /search", f"GET /gallery/{first_id}/thumbnail", "POST /gallery"]
    assert [r["key"] for r in records] == ["kiosk", "kiosk", "alice", "kiosk", "kiosk", "alice"]
    digests = [hashlib.sha256(c).hexdigest() for c in crops]
    assert records[0]["queries"] == digests[:1] and records[1]["queries"] == digests
    assert records[2]["queries"] == digests and records[3]["queries"] == digests[1:]
    assert records[0]["results"] == [[[h["gallery_id"], pytest.approx(h["score"], abs=1e-5)]
                                      for h in one.json()["results"]]]
    assert records[0]["params"]["top_k"] == 3
    assert [[hit[0] for hit in answer] for answer in records[1]["results"]] == \
        [[h["gallery_id"] for h in item["results"]] for item in batch.json()["items"]]
    assert records[4]["thumbnail"] == first_id and records[5]["added"] == added.json()["ids"]
    assert all(r["request_id"] and r["client"] for r in records)
    assert ADMIN_KEY not in log.read_text() and SEARCH_KEY not in log.read_text()

    done = _verify_cli(log)
    assert done.returncode == 0 and "6 records, intact" in done.stdout
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"key":"alice"', '"key":"kiosk"')
    log.write_text("\n".join(lines) + "\n")
    done = _verify_cli(log)
    assert done.returncode == 1 and "record 3" in done.stderr and "altered" in done.stderr
    shown = subprocess.run([sys.executable, "-m", "serving", "audit", "show", str(log), "--key", "alice", "--json",
                            "--since", "1h"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and [json.loads(x)["endpoint"] for x in shown.stdout.splitlines()] == ["POST /gallery"]


def test_an_unwritable_audit_record_refuses_the_search(make_client, gallery_copy, ir_queries, tmp_path,
                                                       monkeypatch) -> None:
    jpeg = ir_queries[0].path.read_bytes()

    def broken(self, *records):
        raise AuditError("cannot write the audit log: No space left on device")

    client = make_client(gallery=gallery_copy, audit_log=tmp_path / "a.log")
    monkeypatch.setattr(audit_log.AuditLog, "append", broken)
    refused = _search(client, jpeg)
    assert refused.status_code == 503 and refused.json()["error"] == "audit_unavailable"
    assert refused.headers["retry-after"] == "5"
    serving_anyway = make_client(gallery=gallery_copy, audit_log=tmp_path / "b.log", audit_failure="serve")
    assert _search(serving_anyway, jpeg).status_code == 200


def test_audit_cli_errors_are_one_sentence(tmp_path) -> None:
    done = _verify_cli(tmp_path / "none.log")
    assert done.returncode == 1 and done.stderr.strip() == f"error: no audit log at {tmp_path / 'none.log'}"
    bad = subprocess.run([sys.executable, "-m", "serving", "audit", "show", str(tmp_path), "--since", "yesterday"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
