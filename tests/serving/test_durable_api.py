"""Gallery changes over HTTP are on disk when acknowledged, or did not happen (issue 17), in-process.

* ENOSPC injected at every write step of the save behind POST /gallery and DELETE: each answer is 507
  saying nothing changed (and memory equals disk), or the change is acknowledged and on disk.
* Other save failures are a 500 with a request id that also say nothing changed.
* Idempotency-Key: a retry after a timeout gets the same ids (200, ``Idempotent-Replayed``), never a copy.
* Read-only servers, damaged galleries (found at start, or in memory), --no-save's unsaved changes in
  /readyz, reload of a directory another writer extended, install of a staging copy.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from index import Gallery
from index.persist import read_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "index"))
from faults import COMMIT_STEP, SaveFaults

JPEG = "image/jpeg"


def _post(client, data: bytes, meta: list[dict] | None = None, **headers):
    meta = meta if meta is not None else [{"camera": 3, "source": "uploads/q.jpg"}]
    return client.post("/gallery", files=[("images", ("q.jpg", data, JPEG))], data={"metadata": json.dumps(meta)},
                       headers=headers)


def _memory_equals_disk(client, directory: Path, fingerprint: str) -> list[int]:
    served = client.app.state.runtime.gallery
    on_disk = Gallery.load(directory, fingerprint=fingerprint, read_only=True)
    assert served.ids().tolist() == on_disk.ids().tolist()
    assert served.get(served.ids()) == on_disk.get(on_disk.ids())
    assert client.get("/gallery/stats").json()["size"] == len(on_disk)
    return on_disk.ids().tolist()


@pytest.mark.parametrize("change", ["add", "delete"])
def test_enospc_at_every_save_step_is_507_or_on_disk(change, make_client, gallery_copy, serving_embedder,
                                                     ir_queries, monkeypatch) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=True)
    jpeg = ir_queries[0].path.read_bytes()
    faults = SaveFaults(monkeypatch)
    victims = iter(client.app.state.runtime.gallery.ids().tolist())

    def attempt():
        return _post(client, jpeg) if change == "add" else client.delete(f"/gallery/{next(victims)}")

    assert attempt().status_code in (200, 201)  # claims the directory, so the counted save is a steady one
    steps = faults.count(lambda: attempt().raise_for_status())
    commit = steps.index(COMMIT_STEP)
    answers = []
    for n in range(1, len(steps) + 1):
        before = _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint)
        faults.arm(n)
        response = attempt()
        faults.disarm()
        after = _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint)
        answers.append((steps[n - 1], response.status_code))
        if n <= commit + 1:
            assert response.status_code == 507, (n, steps[n - 1], response.text)
            body = response.json()
            assert body["error"] == "insufficient_storage" and "nothing was changed" in body["detail"]
            assert "No space left on device" in body["detail"] and response.headers["Retry-After"]
            assert after == before, f"step {n} ({steps[n - 1]}) left a change behind"
        else:  # failed after the commit point: the change is on disk, so it is acknowledged
            assert response.status_code in (200, 201), response.text
            assert after != before
    assert [a for a in answers if a[1] == 507][-1][0] == COMMIT_STEP, answers
    ready = client.get("/readyz").json()
    assert ready["unsaved_changes"] == 0 and ready["last_save_error"] is None  # the last save worked


def test_other_save_failures_are_500_with_a_request_id_and_nothing_changed(make_client, gallery_copy,
                                                                           serving_embedder, ir_queries,
                                                                           monkeypatch, caplog) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=True)
    faults = SaveFaults(monkeypatch, error=errno.EIO)
    before = _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint)
    faults.arm(label="MetadataStore.save")
    response = _post(client, ir_queries[0].path.read_bytes())
    faults.disarm()
    assert response.status_code == 500, response.text
    body = response.json()
    assert body["error"] == "internal_error" and "nothing was changed" in body["detail"]
    assert body["request_id"] == response.headers["X-Request-ID"] and body["request_id"] in body["detail"]
    assert body["request_id"] in caplog.text and "Input/output error" in caplog.text
    assert _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint) == before
    assert "Input/output error" in client.get("/readyz").json()["last_save_error"]
    # A failed DELETE leaves the item in place: the retry removes it (200), it is never a 404.
    faults.arm(label="os.rename")
    assert client.delete(f"/gallery/{before[0]}").status_code == 500
    faults.disarm()
    assert before[0] in client.app.state.runtime.gallery
    assert client.delete(f"/gallery/{before[0]}").status_code == 200


def test_idempotency_key_makes_a_retried_add_safe(make_client, gallery_copy, serving_embedder, ir_queries,
                                                  monkeypatch) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=True)
    jpeg, other = ir_queries[0].path.read_bytes(), ir_queries[1].path.read_bytes()
    first = _post(client, jpeg, **{"Idempotency-Key": "add-7f3a"})
    assert first.status_code == 201, first.text
    retry = _post(client, jpeg, **{"Idempotency-Key": "add-7f3a"})  # the client timed out and tried again
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json()["ids"] == first.json()["ids"] and retry.json()["size"] == first.json()["size"]
    reused = _post(client, other, **{"Idempotency-Key": "add-7f3a"})
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
    assert _post(client, jpeg, **{"Idempotency-Key": "bad key!"}).json()["error"] == "invalid_idempotency_key"
    # The key is saved with the items: a restarted server still recognises the retry.
    restarted = make_client(gallery=gallery_copy, save_on_mutation=True)
    client.app.state.runtime.gallery.close()
    again = _post(restarted, jpeg, **{"Idempotency-Key": "add-7f3a"})
    assert again.status_code == 200 and again.json()["ids"] == first.json()["ids"]
    # A retry after a 507 adds for real (the failed add took its key back with it).
    faults = SaveFaults(monkeypatch)
    faults.arm(label="faiss.write_index")
    assert _post(restarted, other, **{"Idempotency-Key": "add-8b1c"}).status_code == 507
    faults.disarm()
    size = restarted.get("/gallery/stats").json()["size"]
    done = _post(restarted, other, **{"Idempotency-Key": "add-8b1c"})
    assert done.status_code == 201 and done.json()["size"] == size + 1
    assert _memory_equals_disk(restarted, gallery_copy, serving_embedder.fingerprint)


def test_read_only_server_refuses_changes_and_takes_no_lock(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, read_only=True, save_on_mutation=True)
    response = _post(client, ir_queries[0].path.read_bytes())
    assert response.status_code == 409 and response.json()["error"] == "read_only"
    assert "nothing was changed" in response.json()["detail"]
    assert client.get("/readyz").json()["writable"] is False
    assert not client.app.state.runtime.gallery.owns_directory
    assert client.post("/search", files={"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)}).status_code == 200


def test_no_save_changes_show_in_readyz(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=False)
    assert client.get("/readyz").json()["unsaved_changes"] == 0
    assert _post(client, ir_queries[0].path.read_bytes()).status_code == 201
    assert client.get("/readyz").json()["unsaved_changes"] == 1
    assert client.app.state.runtime.gallery.owns_directory is False  # it never writes, so it never locks


def test_a_damaged_gallery_found_at_start_is_not_served(make_client, gallery_copy, ir_queries) -> None:
    data = gallery_copy / read_manifest(gallery_copy)["data_dir"] / "index.faiss"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 4096] = bytes(b ^ 0xFF for b in raw[len(raw) // 2:len(raw) // 2 + 4096])
    data.write_bytes(bytes(raw))
    client = make_client(gallery=gallery_copy)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"] == "gallery_damaged"
    assert "index.faiss: sha256 does not match" in ready.json()["detail"] and "\n" not in ready.json()["detail"]
    search = client.post("/search", files={"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)})
    assert search.status_code == 503 and search.json()["error"] == "gallery_damaged"


def test_damage_in_memory_stops_serving(make_client, gallery_copy, ir_queries) -> None:
    client = make_client(gallery=gallery_copy)
    backend = client.app.state.runtime.gallery._backend
    flat = faiss.downcast_index(backend._index.index)
    faiss.rev_swig_ptr(flat.codes.data(), flat.ntotal * flat.code_size).view(np.float32)[:] = 5e36
    search = client.post("/search", files={"image": ("q.jpg", ir_queries[0].path.read_bytes(), JPEG)})
    assert search.status_code == 503 and search.json()["error"] == "gallery_damaged"
    assert client.get("/readyz").status_code == 503


def test_reload_picks_up_what_another_writer_saved(make_client, gallery_copy, serving_embedder, ir_queries) -> None:
    client = make_client(gallery=gallery_copy, save_on_mutation=True, api_key="k", open_search=True)
    key = {"X-API-Key": "k"}
    # Another writer (here: this process, as an indexer would from outside) extends the directory.
    other = Gallery.load(gallery_copy, claim=True)
    other.add(np.ones((1, serving_embedder.dim)), [{"camera": 9, "source": "indexer"}])
    other.save(gallery_copy)
    other.close()
    stale = _post(client, ir_queries[0].path.read_bytes(), **key)
    assert stale.status_code == 409 and stale.json()["error"] == "gallery_stale"
    assert "nothing was changed" in stale.json()["detail"] and "reload" in stale.json()["detail"]
    size = len(Gallery.load(gallery_copy))
    reloaded = client.post("/gallery/reload", headers=key)
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["source"] == "directory" and reloaded.json()["size"] == size
    added = _post(client, ir_queries[0].path.read_bytes(), **key)
    assert added.status_code == 201 and added.json()["size"] == size + 1
    assert _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint)
    nothing = client.post("/gallery/reload", headers=key)
    assert nothing.status_code == 409 and nothing.json()["error"] == "nothing_to_reload"
    assert client.post("/gallery/reload").status_code == 401


def test_install_a_staging_copy_with_crops_indexed_into_it(make_client, gallery_copy, serving_embedder, tiny_onnx,
                                                           sysu_root, ir_queries, tmp_path) -> None:
    from serving.__main__ import main as cli

    staging = tmp_path / "staging"
    client = make_client(gallery=gallery_copy, save_on_mutation=True, staging_gallery=staging)
    served = client.get("/gallery/stats").json()["size"]
    assert cli(["gallery", "copy", str(gallery_copy), str(staging)]) == 0
    assert cli(["index", "--model", str(tiny_onnx), "--images", str(sysu_root), "--gallery", str(staging),
                "--cameras", "3", "--split", "test", "--no-progress"]) == 0
    indexed = len(Gallery.load(staging)) - served
    assert indexed > 0
    installed = client.post("/gallery/reload")
    assert installed.status_code == 200, installed.text
    assert installed.json() == {"source": "staging", "size": served + indexed, "previous_size": served,
                                "sequence": installed.json()["sequence"]}
    assert _memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint)
    cameras = client.get("/gallery/stats").json()["cameras"]
    assert cameras["3"] == indexed  # searchable at once
    again = client.post("/gallery/reload")  # the copy is of an older save now: installing it would lose nothing
    assert again.status_code == 409 and again.json()["error"] == "staging_stale"  # ... but is refused anyway


def test_a_staging_copy_older_than_the_served_gallery_is_refused(make_client, gallery_copy, ir_queries,
                                                                 serving_embedder, tmp_path) -> None:
    from serving.__main__ import main as cli

    staging = tmp_path / "staging"
    client = make_client(gallery=gallery_copy, save_on_mutation=True, staging_gallery=staging)
    assert cli(["gallery", "copy", str(gallery_copy), str(staging)]) == 0
    acknowledged = _post(client, ir_queries[0].path.read_bytes()).json()["ids"]  # after the copy was taken
    refused = client.post("/gallery/reload")
    assert refused.status_code == 409 and refused.json()["error"] == "staging_stale"
    assert set(acknowledged) <= set(_memory_equals_disk(client, gallery_copy, serving_embedder.fingerprint))


def test_body_timeout_answers_408(make_client, gallery_copy) -> None:
    import asyncio

    client = make_client(gallery=gallery_copy, body_timeout_s=0.2)
    app = client.app
    sent: list[dict] = []

    async def receive():
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b"--x\r\n", "more_body": True}
        await asyncio.sleep(30)  # the client stopped sending

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "raw_path": b"/search", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=x")], "client": ("t", 1),
             "server": ("t", 80), "scheme": "http", "http_version": "1.1", "root_path": "",
             "app": app, "state": {}}

    async def run():
        await asyncio.wait_for(app(scope, receive, send), 10)

    asyncio.run(run())
    start = [m for m in sent if m.get("type") == "http.response.start"]
    assert start and start[0]["status"] == 408
