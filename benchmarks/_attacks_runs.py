"""The seven hostile-upload attacks of ``benchmarks.attacks``, each a function of a running server's URL.

Each function sends the same requests to whatever server it is given and returns a JSON-able dict of counts,
bytes and times, so the before and after servers are measured by one client. The sizes are parameters (the
command line uses the full ones; the smoke test runs each for about a second against a tiny stand-in server).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from benchmarks import _attacks_client as client
from benchmarks._machine import summarize

MIB = client.MIB
REBIND_HOST = "rebind.attacker.example"
_SPAWN = multiprocessing.get_context("spawn")  # helpers in their own interpreters: no GIL shared with the timers


def _counts(statuses: list[Any]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(statuses).items(), key=lambda kv: str(kv[0]))}


def _latency(samples_s: list[float]) -> dict[str, float]:
    stats = summarize(samples_s)
    if samples_s:
        stats["max_ms"] = max(samples_s) * 1e3
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in stats.items()}


# -- 1. open reads -----------------------------------------------------------------------------------------


def open_reads(url: str, queries: list[bytes], *, top_k: int = 100, headers: dict[str, str] | None = None,
               timeout_s: float = 60.0) -> dict[str, Any]:
    """One ``POST /search`` per query crop with no credential: the statuses and the distinct gallery ids seen."""
    statuses, ids = [], set()
    with httpx.Client(base_url=url, timeout=timeout_s, headers=headers) as http:
        for data in queries:
            response = http.post("/search", params={"top_k": top_k}, files={"image": ("q.jpg", data, "image/jpeg")})
            statuses.append(response.status_code)
            if response.status_code == 200:
                ids.update(hit["gallery_id"] for hit in response.json().get("results", []))
    return {"requests": len(queries), "top_k": top_k, "statuses": _counts(statuses), "distinct_ids": len(ids)}


def host_rebind(url: str) -> dict[str, Any]:
    """``GET /gallery/stats`` naming an attacker's host (a DNS-rebinding page): the status."""
    response = httpx.get(f"{url}/gallery/stats", headers={"Host": REBIND_HOST}, timeout=30.0)
    return {"host": REBIND_HOST, "status": response.status_code}


def gallery_without_key(url: str, crop: bytes, *, declared: int = 10 * MIB, sent: int = 64 * 1024,
                        wait_s: float = 5.0) -> dict[str, Any]:
    """``POST /gallery`` with no key: is it refused from the headers, and is an item added?

    Two probes: a body declared as ``declared`` bytes of which ``sent`` are sent (an answer within ``wait_s``
    means the server did not wait for the body), and a complete ``sent``-byte body holding one real crop
    (its status, time, and the gallery size before and after).
    """
    head = client.request_head("POST", "/gallery", url, {"Content-Type": client.multipart_type()}, declared)
    probe = client.send_request(url, head, [b"x" * sent], read_timeout_s=wait_s)
    metadata = b'[{"camera": 1, "person_label": "attacker"}]'
    padding = max(0, sent - len(crop) - len(metadata) - 600)
    body = client.multipart_body([("images", "crop.jpg", "image/jpeg", crop),
                                  ("padding", "pad.bin", "application/octet-stream", b"p" * padding)])
    body = body[:-len(f"--{client.BOUNDARY}--\r\n")] + (
        f"--{client.BOUNDARY}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n").encode() + metadata + (
        f"\r\n--{client.BOUNDARY}--\r\n").encode()
    size_before = _gallery_size(url)
    started = time.monotonic()
    response = httpx.post(f"{url}/gallery", content=body, headers={"Content-Type": client.multipart_type()},
                          timeout=60.0)
    seconds = time.monotonic() - started
    return {"declared_body": {"declared_bytes": declared, "sent_bytes": probe.bytes_sent, "status": probe.status,
                              "answered_before_body": probe.status is not None,
                              "seconds": round(probe.seconds, 3)},
            "full_body": {"bytes": len(body), "status": response.status_code, "seconds": round(seconds, 3),
                          "items_added": None if size_before is None else (_gallery_size(url) or 0) - size_before}}


def _gallery_size(url: str) -> int | None:
    try:
        response = httpx.get(f"{url}/gallery/stats", timeout=30.0)
        return int(response.json()["size"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


# -- 2. thumbnail race -------------------------------------------------------------------------------------


def _swap_loop(swap_dir: str, outside: str, stop: Any, swaps: Any) -> None:
    """Swap ``swap_dir`` for a symlink to ``outside`` and back, as fast as possible, until ``stop`` is set."""
    real = swap_dir + ".real"
    count = 0
    while not stop.is_set():
        os.rename(swap_dir, real)
        os.symlink(outside, swap_dir)
        os.unlink(swap_dir)
        os.rename(real, swap_dir)
        count += 1
    swaps.value = count


def _is_outside(jpeg: bytes) -> bool:
    """True when a thumbnail shows the outside file (pure green), not the person crop."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return False
    b, g, r = (float(image[..., i].mean()) for i in range(3))
    return g > 200 and b < 60 and r < 60


def outside_image(path: Path, width: int = 64, height: int = 128) -> None:
    """Write the file an attacker wants served: a pure green JPEG."""
    import cv2
    import numpy as np

    image = np.zeros((height, width, 3), np.uint8)
    image[..., 1] = 255
    cv2.imwrite(str(path), image)


def thumbnail_race(url: str, item_id: int, swap_dir: Path, outside_dir: Path, *, requests: int = 3000,
                   threads: int = 4, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """``GET /gallery/{id}/thumbnail`` while another process swaps the item's folder for a link outside the root.

    Returns:
        Swaps made, and the answers: 200 with the real crop, 200 with the outside file, other 200s, and every
        other status by code.
    """
    with httpx.Client(base_url=url, timeout=30.0, headers=headers) as http:
        reference = http.get(f"/gallery/{item_id}/thumbnail")
    if reference.status_code != 200:
        return {"error": f"the thumbnail answered {reference.status_code} before the race"}
    stop, swaps = _SPAWN.Event(), _SPAWN.Value("q", 0)
    swapper = _SPAWN.Process(target=_swap_loop, args=(str(swap_dir), str(outside_dir), stop, swaps), daemon=True)
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=30.0, headers=headers) as http:
            for _ in range(n):
                response = http.get(f"/gallery/{item_id}/thumbnail")
                if response.status_code != 200:
                    mine.append(str(response.status_code))
                elif response.content == reference.content:
                    mine.append("200_inside")
                else:
                    mine.append("200_outside" if _is_outside(response.content) else "200_other")
        with lock:
            outcomes.extend(mine)

    swapper.start()
    started = time.monotonic()
    try:
        workers = [threading.Thread(target=worker, args=(requests // threads + (i < requests % threads),))
                   for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        stop.set()
        swapper.join(30)
        _restore(swap_dir)
    counts = Counter(outcomes)
    return {"requests": len(outcomes), "swaps": int(swaps.value), "seconds": round(time.monotonic() - started, 1),
            "served_inside": counts.pop("200_inside", 0), "served_outside": counts.pop("200_outside", 0),
            "other_200": counts.pop("200_other", 0), "status_404": counts.pop("404", 0),
            "status_500": counts.pop("500", 0), "other_statuses": dict(sorted(counts.items()))}


def _restore(swap_dir: Path) -> None:
    real = Path(str(swap_dir) + ".real")
    if swap_dir.is_symlink():
        swap_dir.unlink()
    if real.is_dir() and not swap_dir.exists():
        real.rename(swap_dir)


# -- 3. one byte per segment -------------------------------------------------------------------------------


def one_byte_segments(url: str, pid: int, *, body_bytes: int = 1_900_000, connections: int = 4,
                      cap_s: float = 90.0, after_s: float = 5.0) -> dict[str, Any]:
    """``connections`` multipart ``/search`` bodies of ``body_bytes`` sent one byte per ``send`` (TCP_NODELAY).

    Returns:
        Per connection the bytes sent, status and seconds; the server's ``VmRSS``/``VmHWM`` at the start, at
        their peak while sending, and ``after_s`` seconds after the connections closed.
    """
    content = os.urandom(max(0, body_bytes - 200))
    heads, total = client.multipart([("image", "q.png", "image/png", len(content))])
    body = heads[0] + content + heads[1]
    head = client.request_head("POST", "/search", url, {"Content-Type": client.multipart_type()}, total)
    deadline = time.monotonic() + cap_s
    results: list[client.Sent] = [client.Sent() for _ in range(connections)]

    def send(i: int) -> None:
        results[i] = client.send_request(url, head, client.one_byte_pieces(body), nodelay=True, check_every=4096,
                                         stop_at=deadline, read_timeout_s=30.0)

    with client.Monitor(pid) as monitor:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    time.sleep(after_s)
    later = client.memory_kib(pid)
    base = monitor.base.get("VmRSS", 0)
    sent = sum(r.bytes_sent for r in results)
    return {"connections": connections, "body_bytes": total, "bytes_sent": sent,
            "seconds": round(max(r.seconds for r in results), 1), "statuses": _counts([r.status for r in results]),
            **monitor.growth_mib(),
            "rss_growth_after_close_mib": round((later.get("VmRSS", 0) - base) / 1024, 1),
            "server_bytes_per_byte_sent": round((monitor.peak_rss_kib - base) * 1024 / sent, 1) if sent else None}


# -- 4. decompression bomb in /search/batch ----------------------------------------------------------------


def bomb_body(images: int = 8, side: int = 5000) -> bytes:
    """A ``/search/batch`` body of ``images`` one-colour ``side x side`` PNGs at 1 bit per pixel."""
    png = client.bilevel_png(side, side)
    return client.multipart_body([("images", f"bomb{i}.png", "image/png", png) for i in range(images)])


def bomb_stall(url: str, crop: bytes, *, body: bytes | None = None, idle_s: float = 5.0, bombs: int = 3,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Back-to-back ``/search`` with a normal crop, first alone, then while ``bombs`` bomb batches are sent one by one.

    Returns:
        The searches' latency alone and during the bombs (p50, p99, max), the added delay (max during the
        bombs minus the p50 alone), and each bomb's status and time.
    """
    body = bomb_body() if body is None else body
    phase = ["idle"]
    samples: dict[str, list[float]] = {"idle": [], "bomb": []}
    stop = threading.Event()

    def searcher() -> None:
        with httpx.Client(base_url=url, timeout=60.0, headers=headers) as http:
            while not stop.is_set():
                current = phase[0]
                started = time.perf_counter()
                response = http.post("/search", files={"image": ("q.jpg", crop, "image/jpeg")})
                if response.status_code == 200 and phase[0] == current:
                    samples[current].append(time.perf_counter() - started)

    thread = threading.Thread(target=searcher)
    thread.start()
    bomb_runs = []
    try:
        time.sleep(idle_s)
        phase[0] = "bomb"
        with httpx.Client(base_url=url, timeout=120.0, headers=headers) as http:
            for _ in range(bombs):
                started = time.monotonic()
                response = http.post("/search/batch", content=body, headers={"Content-Type": client.multipart_type()})
                bomb_runs.append({"status": response.status_code, "seconds": round(time.monotonic() - started, 3)})
        phase[0] = "done"
    finally:
        stop.set()
        thread.join()
    idle, during = _latency(samples["idle"]), _latency(samples["bomb"])
    delay = (during.get("max_ms", 0.0) - idle["p50_ms"]) if samples["idle"] and samples["bomb"] else None
    return {"bomb_bytes": len(body), "bombs": bomb_runs, "search_alone": idle, "search_during_bombs": during,
            "added_delay_ms": None if delay is None else round(delay, 1)}


# -- 5. maximal uploads at once ----------------------------------------------------------------------------


def maximal_uploads(url: str, pid: int, tmpdir: Path | None, *, concurrent: int, files: int = 32,
                    file_bytes: int = 10 * MIB, settle_s: float = 2.0) -> dict[str, Any]:
    """``concurrent`` ``/search/batch`` requests at once, each ``files`` random-byte PNG-named parts of ``file_bytes``.

    Returns:
        The statuses, the slowest request's time, the peak growth of the server's memory and its peak bytes of
        temporary files.
    """
    content = os.urandom(file_bytes)
    heads, total = client.multipart([("images", f"{i}.png", "image/png", file_bytes) for i in range(files)])
    head = client.request_head("POST", "/search/batch", url, {"Content-Type": client.multipart_type()}, total)
    pieces = [piece for h in heads[:-1] for piece in (h, content)] + [heads[-1]]
    results: list[client.Sent] = [client.Sent() for _ in range(concurrent)]

    def send(i: int) -> None:
        results[i] = client.send_request(url, head, pieces, read_timeout_s=300.0)

    with client.Monitor(pid, tmpdir) as monitor:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(settle_s)
    return {"concurrent": concurrent, "request_bytes": total, "statuses": _counts([r.status for r in results]),
            "bytes_sent": sum(r.bytes_sent for r in results), "seconds": round(max(r.seconds for r in results), 1),
            **monitor.growth_mib()}


# -- 6. header flood ---------------------------------------------------------------------------------------

_HEADER_LINE = b"X-Flood: " + b"a" * 1014 + b"\r\n"  # 1 KiB per header line


def header_flood(url: str, cap_s: float = 10.0, pace_s: float = 0.001) -> dict[str, Any]:
    """One connection sending header lines for up to ``cap_s``: bytes sent before the server answered or closed.

    16 KiB at a time, ``pace_s`` apart (up to ~16 MB/s): a server that reads the head keeps up, so the bytes
    sent are the bytes it took, not bytes parked in socket buffers after it stopped reading.
    """
    head = f"GET /healthz HTTP/1.1\r\nHost: {':'.join(map(str, client.address(url)))}\r\n".encode()
    chunk = _HEADER_LINE * 16

    def pieces() -> Any:
        while True:
            yield chunk
            time.sleep(pace_s)

    deadline = time.monotonic() + cap_s
    result = client.send_request(url, head, pieces(), stop_at=deadline, read_timeout_s=2.0)
    return {"bytes_sent": result.bytes_sent, "status": result.status, "ended_by_server": result.answered_early,
            "seconds": round(result.seconds, 2)}


def _flood_process(url: str, seconds: float, out: Any) -> None:
    """Flood connections one after another for ``seconds`` (a new one whenever the server ends the last)."""
    deadline, sent, conns = time.monotonic() + seconds, 0, 0
    while time.monotonic() < deadline:
        sent += header_flood(url, cap_s=max(0.0, deadline - time.monotonic()))["bytes_sent"]
        conns += 1
    out.put((sent, conns))


def flood_latency(url: str, *, floods: int = 4, seconds: float = 10.0, idle_s: float = 3.0) -> dict[str, Any]:
    """``GET /healthz`` back to back, alone and while ``floods`` processes push headers: p50 and p99 of each."""

    def probe(duration: float) -> list[float]:
        samples: list[float] = []
        with httpx.Client(base_url=url, timeout=30.0) as http:
            end = time.monotonic() + duration
            while not samples or time.monotonic() < end:
                started = time.perf_counter()
                http.get("/healthz")
                samples.append(time.perf_counter() - started)
        return samples

    idle = probe(idle_s)
    out = _SPAWN.Queue()
    procs = [_SPAWN.Process(target=_flood_process, args=(url, seconds, out), daemon=True) for _ in range(floods)]
    for p in procs:
        p.start()
    time.sleep(min(1.0, seconds / 4))  # let the floods start (spawned interpreters take a moment)
    during = probe(max(0.5, seconds - min(1.0, seconds / 4)))
    totals = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join(30)
    return {"floods": floods, "seconds": seconds, "flood_bytes": sum(t[0] for t in totals),
            "flood_connections": sum(t[1] for t in totals), "healthz_idle": _latency(idle),
            "healthz_during_flood": _latency(during)}


# -- 7. drip-fed body --------------------------------------------------------------------------------------


def drip_feed(url: str, *, declared: int = MIB, interval_s: float = 1.0, cap_s: float = 90.0) -> dict[str, Any]:
    """A multipart ``/search`` body declared as ``declared`` bytes whose part header is sent at once and whose
    content then arrives one byte every ``interval_s``: when the server ends it, and how."""
    lead, _ = client.multipart([("image", "q.png", "image/png", declared)])
    head = client.request_head("POST", "/search", url, {"Content-Type": client.multipart_type()}, declared)
    deadline = time.monotonic() + cap_s

    def drip() -> Any:
        yield lead[0]
        while True:
            yield b"\x89"
            if time.monotonic() + interval_s > deadline:
                return
            time.sleep(interval_s)

    result = client.send_request(url, head, drip(), read_timeout_s=2.0)
    ended = result.status is not None or result.answered_early
    return {"declared_bytes": declared, "bytes_sent": result.bytes_sent, "status": result.status,
            "ended_by_server": ended, "seconds": round(result.seconds, 1), "cap_s": cap_s}
