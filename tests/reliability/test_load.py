"""Bounded loopback load against a real uvicorn process, and gallery mutations racing searches.

Numbers are printed (run with ``-s``) and recorded in docs/reliability.md; the assertions are about
correctness (zero errors, ids that exist, an exact final count) and a loose memory bound, never speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.conftest import JPEG, Server, start_server

REQUESTS = int(os.environ.get("XMREID_LOAD_REQUESTS", 2000))
CONCURRENCY = 32
CAP_S = 240.0  # the run stops here even if unfinished (then the test fails: it must finish well within it)
RSS_GROWTH_MIB = 200
API_KEY = "load-test-key-4242"


@pytest.fixture(scope="module")
def load_server(tiny_onnx: Path, tiny_gallery: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    log = tmp_path_factory.mktemp("load") / "server.log"
    server = start_server(tiny_onnx, tiny_gallery, log, args=["--no-save", "--log-level", "warning",
                                                              "--max-batch-size", "16", "--max-wait-ms", "5"])
    yield server
    server.stop()


async def _search_load(base: str, images: list[bytes], n: int, concurrency: int, cap_s: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.monotonic() + cap_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < n and time.monotonic() < deadline:
            i = issued
            issued += 1
            started = time.perf_counter()
            try:
                r = await client.post("/search", params={"top_k": 10},
                                      files={"image": ("q.jpg", images[i % len(images)], JPEG)})
                if r.status_code != 200 or len(r.json()["results"]) != 10:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            latencies.append(time.perf_counter() - started)

    # A pooled connection must be retired by the client before the server's keep-alive timeout (5 s) closes it:
    # with equal timeouts, a request sent on a connection at the moment the server closes it reads nothing back
    # (ReadError). Clients of any HTTP/1.1 server need the same rule.
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=base, timeout=60.0, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"done": len(latencies), "errors": errors, "seconds": seconds, "rps": len(latencies) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


@pytest.mark.slow
def test_2000_searches_at_concurrency_32_zero_errors_bounded_memory(load_server: Server, ir_queries) -> None:
    images = [q.path.read_bytes() for q in ir_queries]
    warm = asyncio.run(_search_load(load_server.base, images, 64, CONCURRENCY, 60))  # lazy allocations first
    assert not warm["errors"], warm["errors"][:3]
    rss_before, cpu_before, own_before = load_server.rss_mib(), load_server.cpu_s(), time.process_time()
    result = asyncio.run(_search_load(load_server.base, images, REQUESTS, CONCURRENCY, CAP_S))
    rss_after = load_server.rss_mib()
    print(f"CPU seconds: server {load_server.cpu_s() - cpu_before:.1f}, load generator "
          f"{time.process_time() - own_before:.1f}")
    print(f"load: {result['done']} /search in {result['seconds']:.1f} s ({result['rps']:.0f} req/s), "
          f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, errors {len(result['errors'])}; "
          f"server RSS {rss_before:.0f} -> {rss_after:.0f} MiB (peak {load_server.peak_mib():.0f} MiB)")
    assert result["done"] == REQUESTS, f"only {result['done']} requests in the {CAP_S} s cap"
    assert not result["errors"], result["errors"][:5]
    assert rss_after - rss_before < RSS_GROWTH_MIB
    metrics = httpx.get(f"{load_server.base}/metrics").text
    assert f'xmreid_http_requests_total{{endpoint="/search",method="POST",status="200"}} {float(REQUESTS + 64)}' \
        in metrics


# ----------------------------------------------------------------------------- mutations racing searches


@pytest.mark.slow
def test_concurrent_adds_and_deletes_while_searching(tiny_onnx, tiny_gallery, tmp_path, serving_embedder,
                                                     ir_queries) -> None:
    from index import Gallery

    gallery_dir = Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))
    initial = Gallery.load(gallery_dir, fingerprint=serving_embedder.fingerprint)
    source_of: dict[int, str | None] = {int(i): m["source"] for i, m in zip(initial.ids(), initial.get(initial.ids()))}
    initial_ids = set(source_of)
    server = start_server(tiny_onnx, gallery_dir, tmp_path / "server.log",
                          args=["--log-level", "warning", "--max-top-k", "1000"], env={"XMREID_API_KEY": API_KEY, "XMREID_OPEN_SEARCH": "true"})
    images = [q.path.read_bytes() for q in ir_queries]
    key = {"X-API-Key": API_KEY}
    added: dict[int, str] = {}
    deleted_at: dict[int, float] = {}  # id -> when its DELETE was answered 200
    searches: list[tuple[float, list[dict]]] = []
    errors: list[str] = []
    mutating = True

    async def adder(client: httpx.AsyncClient, task: int, rounds: int) -> None:
        for r in range(rounds):
            sources = [f"load/{task}/{r}/{k}/名前.jpg" for k in range(2)]
            files = [("images", (f"{k}.jpg", images[(task + r + k) % len(images)], JPEG)) for k in range(2)]
            meta = json.dumps([{"camera": 1 + k, "source": s} for k, s in enumerate(sources)])
            resp = await client.post("/gallery", files=files, data={"metadata": meta}, headers=key)
            if resp.status_code != 201:
                errors.append(f"add {resp.status_code}: {resp.text[:200]}")
                continue
            for item_id, source in zip(resp.json()["ids"], sources):
                assert item_id not in added and item_id not in initial_ids, f"id {item_id} given twice"
                added[item_id] = source

    async def deleter(client: httpx.AsyncClient, rng: random.Random, rounds: int) -> None:
        for _ in range(rounds):
            alive = sorted((initial_ids | set(added)) - set(deleted_at))
            item_id = rng.choice(alive)
            resp = await client.delete(f"/gallery/{item_id}", headers=key)
            if resp.status_code == 200:
                assert item_id not in deleted_at, f"id {item_id} deleted twice"
                deleted_at[item_id] = time.monotonic()
            elif resp.status_code != 404:  # 404: another deleter took it first
                errors.append(f"delete {resp.status_code}: {resp.text[:200]}")

    async def searcher(client: httpx.AsyncClient, rng: random.Random) -> None:
        while mutating:
            started = time.monotonic()
            resp = await client.post("/search", params={"top_k": 1000},
                                     files={"image": ("q.jpg", rng.choice(images), JPEG)})
            if resp.status_code != 200:
                errors.append(f"search {resp.status_code}: {resp.text[:200]}")
                continue
            searches.append((started, resp.json()["results"]))

    async def main() -> None:
        nonlocal mutating
        async with httpx.AsyncClient(base_url=server.base, timeout=60.0) as client:
            search_tasks = [asyncio.create_task(searcher(client, random.Random(s))) for s in range(6)]
            await asyncio.gather(*(adder(client, t, 8) for t in range(4)),
                                 *(deleter(client, random.Random(100 + d), 12) for d in range(2)))
            mutating = False
            await asyncio.gather(*search_tasks)

    started = time.perf_counter()
    try:
        asyncio.run(main())
        stats = httpx.get(f"{server.base}/gallery/stats").json()
    finally:
        assert server.stop() == 0, server.output()[-3000:]
    seconds = time.perf_counter() - started
    assert not errors, errors[:5]
    source_of.update(added)
    existed = initial_ids | set(added)
    print(f"mutations: {len(added)} added, {len(deleted_at)} deleted, {len(searches)} searches in {seconds:.1f} s")
    assert len(added) == 4 * 8 * 2 and len(deleted_at) >= 12  # two deleters racing may collide (404)
    assert len(searches) > 20
    for started_at, results in searches:
        ids = [h["gallery_id"] for h in results]
        assert len(ids) == len(set(ids)), "an id twice in one answer"
        assert set(ids) <= existed, f"ids that never existed: {set(ids) - existed}"
        for hit in results:  # the metadata served with an id is that id's own
            assert hit["source"] == source_of[hit["gallery_id"]]
        gone = {i for i in ids if i in deleted_at and deleted_at[i] < started_at}
        assert not gone, f"ids deleted before the search started were returned: {gone}"
        scores = [h["score"] for h in results]
        assert scores == sorted(scores, reverse=True)
    expected = existed - set(deleted_at)
    assert stats["size"] == len(expected) == len(initial_ids) + len(added) - len(deleted_at)
    # What the server saved (after every mutation) is exactly what it acknowledged.
    on_disk = Gallery.load(gallery_dir, fingerprint=serving_embedder.fingerprint)
    assert set(on_disk.ids().tolist()) == expected
    assert {m["source"] for m in on_disk.get(sorted(expected))} == {source_of[i] for i in expected}
