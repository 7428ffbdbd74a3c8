"""``kill -9`` of ``gallery expire`` at each stage of its save and of its audit record.

The run removes its items in one save (index/persist.py): both data files written and fsynced into a new
version, then the manifest replace that commits it, then the old version swept, then the audit record. The
child process pauses at one of those moments (its ``os.fsync`` of that file, or the sweep, announce
themselves in a marker file and sleep) and is killed there with SIGKILL. Whatever the moment:

* the gallery loads with every check (``Gallery.load``; ``gallery check`` exits 0);
* it holds all of the run's removals or none of them — never a part;
* the audit trail verifies (a record is on disk whole or not at all);
* the same command run again finishes the job, and its record continues the chain.
"""

from __future__ import annotations

import json
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
from serving.__main__ import main
from serving.core.audit_log import verify

REPO = Path(__file__).resolve().parents[2]
NOW = 1_796_637_600.0  # 2026-12-07T10:00:00Z
DAY = 86400.0
N = 400
# Every third item is 40 days old (expired at 30d), every seventh has no time, the rest are a day old.
STAMPS = [None if i % 7 == 0 else NOW - (40 if i % 3 == 0 else 1) * DAY for i in range(N)]
EXPIRED = [i for i, t in enumerate(STAMPS) if t is not None and t < NOW - 30 * DAY]
ALL = list(range(N))
AFTER = [i for i in ALL if i not in EXPIRED]

CHILD = textwrap.dedent("""
    import os, stat, sys, time
    from pathlib import Path
    import index.persist as persist

    stage, marker = sys.argv[1], Path(sys.argv[2])

    def pause(what):
        marker.write_text(what)
        time.sleep(120)

    real_fsync, real_sweep = os.fsync, persist._remove_stale

    def fsync(fd):
        real_fsync(fd)  # the data is durable: the kill comes right after this file's fsync
        if stat.S_ISREG(os.fstat(fd).st_mode) and stage in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            pause(stage)

    def sweep(directory, keep):
        if stage == "committed":
            pause(stage)
        real_sweep(directory, keep)

    os.fsync, persist._remove_stale = fsync, sweep
    if stage == "unpaused":
        marker.write_text("running")
    from serving.__main__ import main
    code = main(sys.argv[3:])
    marker.write_text(f"finished {code}")
""")

# stage: where the child is killed -> which ids the gallery must then hold
STAGES = {
    "index.faiss": ALL,      # the new version's index written and fsynced in a temporary directory
    "metadata.sqlite": ALL,  # its metadata too; the data directory not yet renamed into place
    ".manifest.json": ALL,   # the new manifest fsynced under a temporary name, not yet replaced: not committed
    "committed": AFTER,      # the manifest replaced (the commit point), the old version not yet swept
    "audit.log": AFTER,      # the audit record written and fsynced
}


def _gallery(target: Path) -> None:
    g = Gallery.create(32, fingerprint="fp")
    g.add(np.random.default_rng(0).standard_normal((N, 32)),
          [{"camera": 1 + i % 4, "source": f"cam/{i:04d}.jpg", **({} if t is None else {"timestamp": t})}
           for i, t in enumerate(STAMPS)])
    g.save(target)
    g.close()


def _expire_argv(gallery: Path, audit: Path) -> list[str]:
    return ["gallery", "expire", str(gallery), "--older-than", "30d", "--now", str(NOW), "--audit-log", str(audit)]


def _kill_child(tmp_path: Path, stage: str, argv: list[str]) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(tmp_path / f"child-{stage}.log", "wb") as log:
        child = subprocess.Popen([sys.executable, str(script), stage, str(marker), *argv], cwd=REPO, env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if stage == "unpaused":
            time.sleep(0.3)  # land somewhere in the run: loading, saving or auditing
        where = marker.read_text() if marker.exists() else "never started"
        assert child.poll() is None or stage == "unpaused", \
            f"child exited early: {(tmp_path / f'child-{stage}.log').read_text()[-2000:]}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    return where


def _ids(gallery: Path) -> list[int]:
    g = Gallery.load(gallery, fingerprint="fp")  # every load check: checksums, rows, index and metadata agree
    try:
        return g.ids().tolist()
    finally:
        g.close()


def _records(audit: Path) -> list[dict]:
    return [json.loads(line) for line in audit.read_text().splitlines()] if audit.exists() else []


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_9_mid_expire_leaves_all_or_none_removed(stage: str, tmp_path: Path, capsys) -> None:
    gallery, audit = tmp_path / "g", tmp_path / "audit.log"
    _gallery(gallery)
    where = _kill_child(tmp_path, stage, _expire_argv(gallery, audit))
    assert where == stage
    assert _ids(gallery) == STAGES[stage]
    assert main(["gallery", "check", str(gallery)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")
    records = _records(audit)
    assert len(records) == (1 if stage == "audit.log" else 0)
    assert not records or verify(audit).ok
    # The same command again: the job is finished (or found finished), and the chain continues.
    assert main(_expire_argv(gallery, audit)) == 0
    out = capsys.readouterr().out
    done = len(EXPIRED) if STAGES[stage] == ALL else 0
    assert f"removed {done}, kept {len(AFTER) - STAMPS.count(None)}, kept {STAMPS.count(None)} without a time" in out
    assert _ids(gallery) == AFTER
    records = _records(audit)
    assert [r["removed_count"] for r in records] == ([len(EXPIRED)] if stage == "audit.log" else []) + [done]
    assert verify(audit).ok and verify(audit).records == len(records)
    # A completed run that saved swept the killed save's leftovers: one version, no temporary files. (A run
    # that found nothing to remove saves nothing; the next save of the gallery sweeps them then.)
    leftovers = sorted(p.name for p in gallery.iterdir() if p.name.startswith((".tmp-", ".manifest", "data-")))
    if done:
        assert len(leftovers) == 1 and leftovers[0].startswith("data-"), leftovers


def test_kill_9_at_an_unplanned_moment(tmp_path: Path) -> None:
    gallery, audit = tmp_path / "g", tmp_path / "audit.log"
    _gallery(gallery)
    where = _kill_child(tmp_path, "unpaused", _expire_argv(gallery, audit))
    assert where in ("running", "finished 0")
    assert _ids(gallery) in (ALL, AFTER)
    assert not audit.exists() or verify(audit).ok
