"""One writer per gallery directory: the write lock, its holder's name, read-only opens, stale saves.

A child process (a real second writer: ``flock`` is per process) holds a gallery; the parent must be
refused at once with the child named, may still open it read-only, and must not overwrite the child's
saves once the child is gone.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index import Gallery
from index.errors import GalleryLockedError, ReadOnlyGalleryError, StaleGalleryError
from index.locking import LOCK_FILE, acquire_directory, read_holder

REPO = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from index import Gallery

    target, go, done = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    gallery = Gallery.load(target, claim=True)
    done.write_text("holding")
    while not go.exists():
        time.sleep(0.02)
    gallery.add(np.ones((1, 8)), [{"camera": 9, "source": "child"}])
    gallery.save(target)
    done.write_text("saved")
    time.sleep(float(sys.argv[4]))
""")


def _gallery(target: Path, n: int = 4) -> None:
    gallery = Gallery.create(8, fingerprint="fp")
    gallery.add(np.random.default_rng(0).standard_normal((n, 8)), [{"camera": 1}] * n)
    gallery.save(target)
    gallery.close()


def _start_holder(tmp_path: Path, target: Path, linger_s: float = 60.0) -> tuple[subprocess.Popen, Path, Path]:
    script, go, done = tmp_path / "holder.py", tmp_path / "go", tmp_path / "done"
    script.write_text(HOLDER)
    child = subprocess.Popen([sys.executable, str(script), str(target), str(go), str(done), str(linger_s),
                              "--api-key", "hunter2"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                       "PYTHONPATH": str(REPO)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not done.exists():
        assert child.poll() is None, child.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.02)
    return child, go, done


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path: Path, caplog) -> None:
    target = tmp_path / "g"
    _gallery(target)
    child, go, done = _start_holder(tmp_path, target)
    try:
        started = time.perf_counter()
        with pytest.raises(GalleryLockedError) as refused:
            Gallery.load(target, claim=True)
        assert time.perf_counter() - started < 1.0
        message = str(refused.value)
        assert f"pid {child.pid}" in message and "holder.py" in message and " since 20" in message
        assert "\n" not in message and "hunter2" not in message  # one sentence; secrets never written down
        assert refused.value.holder["pid"] == child.pid
        assert "hunter2" not in (target / LOCK_FILE).read_text()
        # A lazy writer (no claim) is refused at its first save, and its change is not on disk.
        lazy = Gallery.load(target)
        lazy.add(np.ones((1, 8)), [{"camera": 2}])
        with pytest.raises(GalleryLockedError):
            lazy.save(target)
        # Readers are welcome, and say that they are readers and who writes.
        with caplog.at_level(logging.INFO, logger="index.gallery"):
            reader = Gallery.load(target, read_only=True)
        assert len(reader) == 4
        assert any("read-only" in r.message and f"pid {child.pid}" in r.message for r in caplog.records)
        with pytest.raises(ReadOnlyGalleryError):
            reader.add(np.ones((1, 8)), [{"camera": 2}])
        with pytest.raises(ReadOnlyGalleryError):
            reader.save(target)
        # The child saves; once it is gone, the lazy writer must not overwrite that save.
        go.write_text("go")
        while done.read_text() != "saved":
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait(timeout=30)
    with pytest.raises(StaleGalleryError, match=r"saved by another writer.*\(save 2 on disk, 1 read\)"):
        lazy.save(target)
    reloaded = Gallery.load(target, claim=True)
    assert [m["source"] for m in reloaded.get([4])] == ["child"]  # the child's acknowledged save survived
    reloaded.add(np.ones((1, 8)), [{"camera": 2}])
    reloaded.save(target)
    assert len(Gallery.load(target)) == 6


def test_lock_is_released_on_close_and_when_the_holder_dies(tmp_path: Path) -> None:
    target = tmp_path / "g"
    _gallery(target)
    child, _, _ = _start_holder(tmp_path, target)
    with pytest.raises(GalleryLockedError):
        acquire_directory(target)
    child.kill()  # kill -9: the kernel drops the flock, there is no stale lock to clean up
    child.wait(timeout=30)
    owner = Gallery.load(target, claim=True)
    assert owner.owns_directory and read_holder(target)["pid"] == os.getpid()
    owner.close()
    assert not owner.owns_directory and read_holder(target) == {}


def test_one_process_shares_its_lock_and_the_sequence_keeps_objects_apart(tmp_path: Path) -> None:
    target = tmp_path / "g"
    _gallery(target)
    first, second = Gallery.load(target, claim=True), Gallery.load(target, claim=True)  # same process: shared
    first.add(np.ones((1, 8)), [{"camera": 3}])
    first.save(target)
    second.add(np.ones((1, 8)), [{"camera": 4}])
    with pytest.raises(StaleGalleryError):
        second.save(target)  # would have dropped first's item and reissued its id
    assert Gallery.load(target).get([4])[0]["camera"] == 3
    first.close()
    assert second.owns_directory  # the other reference still holds the process's lock
    second.close()


def test_a_new_gallery_never_overwrites_an_existing_one(tmp_path: Path) -> None:
    target = tmp_path / "g"
    _gallery(target)
    with pytest.raises(StaleGalleryError, match="already holds"):
        Gallery.create(8).save(target)
    with pytest.raises(StaleGalleryError, match="already holds"):
        Gallery.create(8, directory=target)
    assert len(Gallery.load(target)) == 4


def test_lock_file_names_the_holder(tmp_path: Path) -> None:
    gallery = Gallery.create(8, directory=tmp_path / "g")
    holder = json.loads((tmp_path / "g" / LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["command"] and holder["since"].startswith("20")
    gallery.close()


def test_a_copy_records_its_origin_and_leaves_the_source_alone(tmp_path: Path) -> None:
    _gallery(tmp_path / "g")
    source = Gallery.load(tmp_path / "g", read_only=True)
    source.save(tmp_path / "copy")
    copy = Gallery.load(tmp_path / "copy")
    assert copy.origin == {"uid": source.uid, "sequence": 1, "directory": str(tmp_path / "g")}
    assert source.directory == tmp_path / "g" and not source.owns_directory
    with pytest.raises(StaleGalleryError):
        source.save(tmp_path / "copy")  # a copy never lands on an existing gallery
