"""Concurrent search / add / remove from server threads, and the readers-writer lock itself."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from index import Gallery
from index.locking import ReadWriteLock


def _camera(ids: np.ndarray) -> np.ndarray:
    return ids % 4 + 1  # every item's camera follows from its id, so any result can be checked


@pytest.mark.parametrize("kind", ["flat", "flat_fp16", "hnsw"])
def test_concurrent_search_add_remove(kind: str, tmp_path) -> None:
    dim, rng = 16, np.random.default_rng(0)
    gallery = Gallery.create(dim, kind)
    gallery.add(rng.standard_normal((800, dim)), [{"camera": int(c)} for c in _camera(np.arange(800))])
    errors: list[BaseException] = []
    removed: set[int] = set()

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                errors.append(exc)
        return run

    def searcher() -> None:
        local = np.random.default_rng(threading.get_ident() % 2**32)
        for _ in range(40):
            cams = [1, 3]
            _, ids = gallery.search(local.standard_normal((3, dim)), 8, cameras=cams)
            assert np.all(ids >= 0) and np.all(np.isin(_camera(ids), cams))

    def adder() -> None:
        local = np.random.default_rng(1)
        for _ in range(20):
            start = gallery.stats()["next_id"]
            ids = gallery.add(local.standard_normal((10, dim)),
                              [{"camera": int(c)} for c in _camera(np.arange(start, start + 10))])
            assert np.all(_camera(ids) == _camera(np.arange(start, start + 10)))

    def remover() -> None:
        for first in range(0, 200, 10):
            gallery.remove(np.arange(first, first + 10))
            removed.update(range(first, first + 10))

    threads = [threading.Thread(target=guard(f)) for f in (searcher, searcher, searcher, adder, remover)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert len(gallery) == 800 + 200 - 200
    _, ids = gallery.search(np.random.default_rng(5).standard_normal((4, dim)), 50)
    assert not np.isin(ids, list(removed)).any()
    gallery.save(tmp_path / "g")
    assert len(Gallery.load(tmp_path / "g")) == 800  # the load-time id check passes


def test_rwlock_readers_share_writers_exclude() -> None:
    lock = ReadWriteLock()
    inside: list[str] = []
    log: list[tuple[str, int]] = []
    gate = threading.Event()

    def reader(name: str) -> None:
        with lock.read():
            inside.append(name)
            log.append((name, len(inside)))
            gate.wait(5)
            inside.remove(name)

    def writer() -> None:
        with lock.write():
            log.append(("w", len(inside)))

    readers = [threading.Thread(target=reader, args=(f"r{i}",)) for i in range(3)]
    for t in readers:
        t.start()
    deadline = time.monotonic() + 5
    while len(inside) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(inside) == 3, "readers hold the lock together"
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)
    assert ("w", 0) not in log and not any(name == "w" for name, _ in log), "the writer waits for the readers"
    late = threading.Thread(target=reader, args=("late",))
    late.start()
    time.sleep(0.05)
    assert "late" not in inside, "a waiting writer goes before new readers"
    gate.set()
    for t in [*readers, w, late]:
        t.join(5)
    assert ("w", 0) in log and log.index(("w", 0)) < [n for n, _ in log].index("late")
