"""A save killed with SIGKILL leaves a loadable gallery: the previous one before the commit point,
the new one after it.

The child process saves a 300-item gallery, adds 300 more and saves again; it is paused inside the
second save (``os.fsync`` of a file, and ``_remove_stale``, replaced by a version that announces
itself through a marker file and sleeps) and the parent kills it there. The ``unpaused`` case kills a
real save of a larger gallery at whatever point it has reached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index import Gallery

CHILD = textwrap.dedent("""
    import os, stat, sys, time
    from pathlib import Path
    import numpy as np
    import index.persist as persist
    from index import Gallery

    target, stage, marker, n, dim = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    rng = np.random.default_rng(0)
    gallery = Gallery.create(dim, "flat", fingerprint="fp")
    gallery.add(rng.standard_normal((n, dim)), [{"camera": 1}] * n)
    gallery.save(target)
    gallery.add(rng.standard_normal((n, dim)), [{"camera": 2}] * n)

    def pause(what):
        marker.write_text(what)
        time.sleep(120)

    calls = []
    real_fsync, real_cleanup = os.fsync, persist._remove_stale

    def fsync(fd):
        real_fsync(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return  # a folder's fsync: the stages count the files written
        calls.append(fd)
        if stage == str(len(calls)):
            pause(f"file fsync {len(calls)}")

    def cleanup(directory, keep):
        if stage == "committed":
            pause("committed")
        real_cleanup(directory, keep)

    os.fsync, persist._remove_stale = fsync, cleanup
    if stage == "unpaused":
        marker.write_text("saving")
    gallery.save(target)
    marker.write_text("finished")
""")

# stage: where the child is killed -> how many items the directory must then hold
STAGES = {
    "1": 300,          # index file written into the temporary directory
    "2": 300,          # metadata written too, data directory not yet renamed
    "3": 300,          # data directory in place, new manifest written to a temp name, not yet replaced
    "committed": 600,  # manifest replaced, old version not yet deleted
}


def _run_child(tmp_path: Path, stage: str, n: int, dim: int) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "g"), stage, str(marker), str(n), str(dim)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if stage == "unpaused":
            time.sleep(0.05)  # land somewhere inside the save
        assert child.poll() is None, f"child exited early: {child.communicate()[1].decode()[-2000:]}"
        where = marker.read_text()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return where


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_mid_save_leaves_a_loadable_gallery(stage: str, tmp_path: Path) -> None:
    _run_child(tmp_path, stage, 300, 16)
    gallery = Gallery.load(tmp_path / "g", fingerprint="fp")
    assert len(gallery) == STAGES[stage]
    rng = np.random.default_rng(0)
    first = rng.standard_normal((300, 16))
    # the surviving gallery answers with its own vectors: item i is its own nearest neighbour
    _, ids = gallery.search(first[:20], 1)
    assert ids[:, 0].tolist() == list(range(20))
    assert gallery.get([299])[0]["camera"] == 1
    # the next save from a healthy process commits and sweeps the killed save's leftovers
    gallery.add(first[:1], [{"camera": 3}])
    gallery.save(tmp_path / "g")
    leftovers = [p.name for p in (tmp_path / "g").iterdir() if p.name.startswith((".tmp-", ".manifest"))]
    assert leftovers == [] and len([p for p in (tmp_path / "g").iterdir() if p.name.startswith("data-")]) == 1
    assert len(Gallery.load(tmp_path / "g")) == STAGES[stage] + 1


def test_kill_during_an_unpaused_save(tmp_path: Path) -> None:
    where = _run_child(tmp_path, "unpaused", 20_000, 128)  # ~20 MB index + 40k SQLite rows to save
    assert where in ("saving", "finished")
    assert len(Gallery.load(tmp_path / "g", fingerprint="fp")) in (20_000, 40_000)
