"""Two writers on one gallery, as an operator would run them (issue 17): real processes, real locks.

In every interleaving tried (two indexers; a server and an indexer, either one first; two servers), the
second writer is refused at once with the holder named (pid and command), and no acknowledged item is
ever lost or re-numbered: each acknowledged id still names the crop it was given to.

An indexer is "paused" (it holds the gallery, having opened it, until told to go on) by a wrapper that
delays its embedding loop; everything else is the real ``python -m serving`` command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from index import Gallery
from tests.reliability.conftest import JPEG, REPO

PAUSED = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import serving.indexing.local as indexing

    go = Path(sys.argv[1])
    real = indexing._index_into

    def paused(*args, **kwargs):
        Path(str(go) + ".held").write_text("held")
        while not go.exists():
            time.sleep(0.05)
        return real(*args, **kwargs)

    indexing._index_into = paused
    from serving.__main__ import main
    sys.exit(main(sys.argv[2:]))
""")

# PYTHONPATH: a script run by path puts its own folder first on sys.path, so without it `serving` would be
# whatever the interpreter has installed (an editable install of another checkout), not this one.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _index_args(model: Path, images: Path, gallery: Path, cameras: str) -> list[str]:
    return ["index", "--model", str(model), "--images", str(images), "--gallery", str(gallery), "--cameras", cameras,
            "--split", "all", "--no-progress"]


class PausedIndexer:
    """``python -m serving index`` that stops, holding the gallery, until :meth:`release`."""

    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        script = tmp_path / "paused_indexer.py"
        script.write_text(PAUSED)
        self.go = tmp_path / f"go-{time.monotonic_ns()}"
        self.log = tmp_path / f"{self.go.name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), str(self.go), *args], cwd=REPO, env=ENV,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while not Path(str(self.go) + ".held").exists():
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the indexer never opened the gallery"
            time.sleep(0.05)

    def release(self) -> int:
        self.go.write_text("go")
        return self.proc.wait(timeout=300)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _refused(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "serving", *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    return done, time.perf_counter() - started


def _one_line_naming(done: subprocess.CompletedProcess, pid: int, command: str) -> str:
    assert done.returncode == 1, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and line.startswith("error: ")
    assert f"already open for writing by pid {pid}" in line and command in line and " since 20" in line, line
    return line


def _post(base: str, image: bytes, source: str) -> httpx.Response:
    return httpx.post(f"{base}/gallery", data={"metadata": json.dumps([{"camera": 7, "source": source}])},
                      files=[("images", ("a.jpg", image, JPEG))], timeout=60)


def _assert_acknowledged(gallery_dir: Path, acknowledged: dict[int, str]) -> Gallery:
    """Every acknowledged id is on disk and still names its own crop; ids and sources are unique."""
    gallery = Gallery.load(gallery_dir, read_only=True)
    rows = {m["id"]: m for m in gallery.get(gallery.ids())}
    for item_id, source in acknowledged.items():
        assert rows.get(item_id, {}).get("source") == source, (item_id, source, rows.get(item_id))
    sources = [m["source"] for m in rows.values()]
    assert len(sources) == len(set(sources)), "an item was added twice"
    return gallery


@pytest.mark.slow
def test_two_indexers_on_one_gallery(tiny_onnx, sysu_root, tmp_path) -> None:
    gallery = tmp_path / "gallery"
    first = PausedIndexer(tmp_path, _index_args(tiny_onnx, sysu_root, gallery, "1"))
    try:
        second, seconds = _refused(_index_args(tiny_onnx, sysu_root, gallery, "2"))
        line = _one_line_naming(second, first.proc.pid, " index --model")
        assert "POST them to its /gallery" in line  # says how to add crops to a served gallery
        print(f"second indexer refused after {seconds:.2f} s (process start to exit): {line[:160]}...")
        assert first.release() == 0, first.log.read_text()[-3000:]
    finally:
        first.kill()
    rerun, _ = _refused(_index_args(tiny_onnx, sysu_root, gallery, "2"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    result = _assert_acknowledged(gallery, {})
    cameras = result.stats()["cameras"]
    assert set(cameras) == {1, 2} and cameras[1] == cameras[2] > 0  # both runs' items: none lost
    assert result.ids().tolist() == list(range(len(result)))


@pytest.mark.slow
def test_server_and_indexer_in_either_order(tiny_onnx, tiny_gallery, sysu_root, tmp_path, server_factory,
                                            ir_queries) -> None:
    gallery = Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))
    image = ir_queries[0].path.read_bytes()
    acknowledged: dict[int, str] = {}
    # 1. The server wrote first (it holds the gallery from its first saved change): the indexer is refused.
    server = server_factory(gallery, "--log-level", "warning")
    response = _post(server.base, image, "server/0")
    assert response.status_code == 201, response.text
    acknowledged[response.json()["ids"][0]] = "server/0"
    refused, seconds = _refused(_index_args(tiny_onnx, sysu_root, gallery, "3"))
    _one_line_naming(refused, server.pid, "serving serve")
    print(f"indexer refused by the serving server after {seconds:.2f} s")
    assert server.stop() == 0
    _assert_acknowledged(gallery, acknowledged)
    # 2. The indexer holds the gallery while a server that loaded it earlier takes a change: refused (409),
    #    then stale once the indexer has saved; after a reload the change goes through. Nothing is lost.
    server = server_factory(gallery, "--log-level", "warning")
    indexer = PausedIndexer(tmp_path, _index_args(tiny_onnx, sysu_root, gallery, "3"))
    try:
        locked = _post(server.base, image, "server/1")
        assert locked.status_code == 409 and locked.json()["error"] == "gallery_locked", locked.text
        assert f"pid {indexer.proc.pid}" in locked.json()["detail"] and "nothing was changed" in locked.json()["detail"]
        search = httpx.post(f"{server.base}/search", files={"image": ("q.jpg", image, JPEG)}, timeout=60)
        assert search.status_code == 200  # searches go on meanwhile
        assert indexer.release() == 0, indexer.log.read_text()[-3000:]
    finally:
        indexer.kill()
    stale = _post(server.base, image, "server/1")
    assert stale.status_code == 409 and stale.json()["error"] == "gallery_stale", stale.text
    on_disk = len(Gallery.load(gallery, read_only=True))
    reloaded = httpx.post(f"{server.base}/gallery/reload", timeout=60)
    assert reloaded.status_code == 200 and reloaded.json()["size"] == on_disk, reloaded.text
    response = _post(server.base, image, "server/1")
    assert response.status_code == 201, response.text
    acknowledged[response.json()["ids"][0]] = "server/1"
    assert server.stop() == 0
    final = _assert_acknowledged(gallery, acknowledged)
    assert final.stats()["cameras"][3] > 0 and len(final) == on_disk + 1


@pytest.mark.slow
def test_two_servers_on_one_gallery(tiny_gallery, tmp_path, server_factory, ir_queries) -> None:
    gallery = Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))
    image = ir_queries[0].path.read_bytes()
    first, second = server_factory(gallery, "--log-level", "warning"), server_factory(gallery, "--log-level", "warning")
    acknowledged: dict[int, str] = {}
    response = _post(first.base, image, "first/0")
    assert response.status_code == 201
    acknowledged[response.json()["ids"][0]] = "first/0"
    started = time.perf_counter()
    locked = _post(second.base, image, "second/0")
    assert locked.status_code == 409 and locked.json()["error"] == "gallery_locked"
    assert time.perf_counter() - started < 10  # includes embedding the upload; the lock itself never waits
    assert f"pid {first.pid}" in locked.json()["detail"] and "serving serve" in locked.json()["detail"]
    assert httpx.post(f"{second.base}/search", files={"image": ("q.jpg", image, JPEG)}, timeout=60).status_code == 200
    # A server that must own the gallery from the start refuses to start at all.
    third = server_factory(gallery, "--exclusive", "--log-level", "warning", ready=False)
    assert third.proc.wait(timeout=300) == 1
    last = third.output().strip().splitlines()[-1]
    assert last.startswith("error: ") and f"pid {first.pid}" in last and "Traceback" not in third.output()
    assert first.stop() == 0
    stale = _post(second.base, image, "second/0")
    assert stale.status_code == 409 and stale.json()["error"] == "gallery_stale"
    assert httpx.post(f"{second.base}/gallery/reload", timeout=60).status_code == 200
    response = _post(second.base, image, "second/0")
    assert response.status_code == 201
    acknowledged[response.json()["ids"][0]] = "second/0"
    assert second.stop() == 0
    _assert_acknowledged(gallery, acknowledged)
    assert len(set(acknowledged)) == 2  # two acknowledged items, two different ids
