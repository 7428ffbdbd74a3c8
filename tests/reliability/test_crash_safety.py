"""``kill -9`` the batch indexer and the server mid-write; what is on disk must still load and agree.

The promise (index/persist.py): a save writes a complete new version beside the old one and commits it
by replacing ``manifest.json``, so at any instant the directory holds one complete gallery. The indexer
saves every ``--save-every`` batches and a rerun skips every ``source`` already stored; the server saves
after every mutation before answering. These tests kill the processes with SIGKILL (no handler, no final
save) at moments that fall inside saves as often as not, and check:

* the gallery loads (``Gallery.load`` refuses an index and metadata that disagree);
* the indexer, resumed, ends with exactly one item per image file: no duplicate, none missing;
* the server lost no acknowledged item, and restarts on what it saved.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.reliability.conftest import JPEG, REPO, start_server

API_KEY = "crash-test-key-77"
ADDERS = 6  # concurrent POST /gallery clients, 2 images each


def manifest_count(gallery: Path) -> int:
    try:
        return int(json.loads((gallery / "manifest.json").read_text())["count"])
    except (OSError, ValueError, KeyError):  # not written yet, or caught between write and rename
        return -1


def files_agree(gallery: Path) -> set[int]:
    """Read the committed version's files directly (not through ``Gallery.load``) and check that the FAISS
    index and the SQLite metadata hold the same ids, as many as the manifest says; return them."""
    import sqlite3

    import faiss

    manifest = json.loads((gallery / "manifest.json").read_text())
    data = gallery / manifest["data_dir"]
    index = faiss.read_index(str(data / "index.faiss"))  # an IndexIDMap2; keep it alive while reading id_map
    index_ids = faiss.vector_to_array(index.id_map).tolist()
    with sqlite3.connect(f"file:{data / 'metadata.sqlite'}?mode=ro", uri=True) as db:
        meta_ids = [row[0] for row in db.execute("SELECT id FROM items")]
    assert sorted(index_ids) == sorted(meta_ids), "index and metadata disagree"
    assert len(set(index_ids)) == len(index_ids) == int(manifest["count"])
    assert not index_ids or max(index_ids) < int(manifest["next_id"])
    return set(index_ids)


def load_and_check(gallery: Path, fingerprint: str):
    """The files agree (:func:`files_agree`), and ``Gallery.load`` (with its own checks) opens them."""
    from index import Gallery

    on_disk = files_agree(gallery)
    loaded = Gallery.load(gallery, fingerprint=fingerprint)
    assert set(loaded.ids().tolist()) == on_disk and len(loaded) == len(on_disk)
    return loaded


@pytest.fixture
def image_tree(sysu_root: Path, tmp_path: Path) -> tuple[Path, set[str]]:
    """A generic ``cam<N>/<pid>/<file>.jpg`` tree with the RGB crops of every identity (192 files)."""
    root = tmp_path / "images"
    for cam in (1, 2, 4, 5):
        shutil.copytree(sysu_root / f"cam{cam}", root / f"cam{cam}")
    files = {p.relative_to(root).as_posix() for p in root.rglob("*.jpg")}
    assert len(files) >= 150
    return root, files


@pytest.mark.slow
def test_kill_9_indexer_mid_run_then_resume_completes_without_duplicates(tiny_onnx, image_tree, tmp_path,
                                                                          serving_embedder) -> None:
    root, files = image_tree
    gallery = tmp_path / "gallery"
    cmd = [sys.executable, "-m", "serving", "index", "--model", str(tiny_onnx), "--images", str(root),
           "--gallery", str(gallery), "--batch-size", "4", "--save-every", "1", "--workers", "1", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    kills = []
    mid_save = 0
    previous = 0
    for attempt in range(3):
        with open(tmp_path / f"index-{attempt}.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        # Wait until this run has saved progress of its own, then kill at a random moment (often mid-save).
        while manifest_count(gallery) < previous + 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)  # frozen: it cannot finish between the check below and the kill
            time.sleep(0.05)
        if proc.poll() is not None:
            break  # finished before we could kill it: nothing left to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        loaded = load_and_check(gallery, serving_embedder.fingerprint)
        sources = [m["source"] for m in loaded.get(loaded.ids())]
        assert len(sources) == len(set(sources)), "a killed run left duplicates"
        assert set(sources) <= files
        kills.append(len(sources))
        # Evidence of where the kill fell: a temp dir or a second version means it interrupted a save.
        mid_save += any(p.name.startswith(".tmp-") for p in gallery.iterdir()) or \
            sum(p.name.startswith("data-") for p in gallery.iterdir()) > 1
        previous = len(sources)
    assert kills and kills[0] < len(files), "the indexer was never killed mid-run"

    before_final = len(load_and_check(gallery, serving_embedder.fingerprint))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    final = load_and_check(gallery, serving_embedder.fingerprint)
    sources = Counter(m["source"] for m in final.get(final.ids()))
    print(f"indexer killed at {kills} of {len(files)} images ({mid_save} kill(s) inside a save); resumed run: "
          f"{done.stdout.strip().splitlines()[0]}")
    assert max(sources.values()) == 1, [s for s, n in sources.items() if n > 1][:5]
    assert set(sources) == files  # no image missing, nothing foreign
    assert f"already in the gallery {before_final}" in done.stdout  # resumed, not restarted
    # Leftovers of the killed saves were cleaned up by the completed one: one version, no temp dirs.
    leftovers = sorted(p.name for p in gallery.iterdir() if p.name.startswith((".tmp-", "data-")))
    assert len(leftovers) == 1 and leftovers[0].startswith("data-"), leftovers


@pytest.mark.slow
def test_kill_9_server_during_post_bursts_loses_no_acknowledged_item(tiny_onnx, tiny_gallery, tmp_path,
                                                                     serving_embedder, ir_queries) -> None:
    gallery = Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))
    images = [q.path.read_bytes() for q in ir_queries]
    key = {"X-API-Key": API_KEY}
    acked: dict[int, str] = {}
    initial = set(load_and_check(gallery, serving_embedder.fingerprint).ids().tolist())
    rounds = []

    async def burst(base: str, server, round_: int, kill_after: int) -> int:
        sent = 0

        async def adder(client: httpx.AsyncClient, task: int) -> None:
            nonlocal sent
            for r in range(1000):
                sources = [f"crash/{round_}/{task}/{r}/{k}" for k in range(2)]
                files = [("images", (f"{k}.jpg", images[(task + r + k) % len(images)], JPEG)) for k in range(2)]
                meta = json.dumps([{"camera": 1, "source": s} for s in sources])
                sent += 2
                try:
                    resp = await client.post("/gallery", files=files, data={"metadata": meta}, headers=key)
                except httpx.TransportError:
                    return  # the server is gone
                assert resp.status_code == 201, resp.text
                acked.update(zip(resp.json()["ids"], sources))

        async def killer() -> None:
            start, deadline = len(acked), time.monotonic() + 120
            while len(acked) < start + kill_after and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            server.kill()  # SIGKILL with requests in flight, some of them mid-save

        try:
            async with httpx.AsyncClient(base_url=base, timeout=30.0) as client:
                await asyncio.gather(killer(), *(adder(client, t) for t in range(ADDERS)))
        finally:
            server.kill()
        return sent

    for round_ in range(2):
        server = start_server(tiny_onnx, gallery, tmp_path / f"server-{round_}.log", args=["--log-level", "warning"],
                              env={"XMREID_API_KEY": API_KEY, "XMREID_OPEN_SEARCH": "true"})
        sent = asyncio.run(burst(server.base, server, round_, kill_after=10 + 7 * round_))
        assert server.proc.returncode == -signal.SIGKILL
        loaded = load_and_check(gallery, serving_embedder.fingerprint)
        stored = dict(zip(loaded.ids().tolist(), (m["source"] for m in loaded.get(loaded.ids()))))
        missing = {i: s for i, s in acked.items() if stored.get(i) != s}
        assert not missing, f"acknowledged items lost or changed by kill -9: {missing}"
        assert initial <= set(stored), "kill -9 lost items that were there before"
        # Saved but never answered (in flight at the kill): allowed, at most one request per adder per round.
        extra = set(stored) - initial - set(acked)
        assert len(extra) <= 2 * ADDERS * (round_ + 1), extra
        sources = [s for s in stored.values() if s and s.startswith("crash/")]
        assert len(sources) == len(set(sources)), "an item was saved twice"
        rounds.append((len(acked), len(extra), sent))  # cumulative acknowledged, this round's extras and sends

    # Restart on what the last kill left: ready, same size, searchable, and new ids are never reused.
    server = start_server(tiny_onnx, gallery, tmp_path / "server-final.log", args=["--log-level", "warning"],
                          env={"XMREID_API_KEY": API_KEY, "XMREID_OPEN_SEARCH": "true"})
    try:
        assert httpx.get(f"{server.base}/readyz").json()["gallery_size"] == len(stored)
        resp = httpx.post(f"{server.base}/gallery", headers=key, data={"metadata": json.dumps([{"camera": 1}])},
                          files=[("images", ("a.jpg", images[0], JPEG))])
        assert resp.status_code == 201 and resp.json()["ids"][0] > max(stored)
        assert httpx.post(f"{server.base}/search", files={"image": ("q.jpg", images[0], JPEG)}).status_code == 200
    finally:
        assert server.stop() == 0
    print(f"server killed twice mid-burst: (acknowledged, saved-unacknowledged, sent) per round = {rounds}; "
          f"all acknowledged items on disk")
