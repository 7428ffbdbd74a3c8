"""``python -m serving gallery expire DIR --older-than AGE``: exact ids, counts, exit codes, the audit record.

The cut-off is ``--now`` minus the age; an item stamped strictly before it is removed, one stamped exactly at
it is kept, and items without a timestamp are kept and counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from index import Gallery
from index.persist import read_manifest
from serving.__main__ import main
from serving.core.audit_log import verify

REPO = Path(__file__).resolve().parents[2]
NOW = 1_796_637_600.0  # 2026-12-07T10:00:00Z
DAY = 86400.0
CUTOFF = NOW - 30 * DAY  # --older-than 30d
# id -> timestamp (None: no time). Expired at 30d: 0 (40 days old), 2 (one second past the cut-off), 6.
STAMPS = [NOW - 40 * DAY, CUTOFF, CUTOFF - 1, NOW - DAY, None, NOW, NOW - 365 * DAY, None, CUTOFF + 1]
EXPIRED = [0, 2, 6]


def _gallery(target: Path, stamps: list[float | None] = STAMPS, dim: int = 8) -> None:
    g = Gallery.create(dim, fingerprint="fp")
    g.add(np.random.default_rng(0).standard_normal((len(stamps), dim)),
          [{"camera": 1 + i % 2, "source": f"cam/{i}.jpg", **({} if t is None else {"timestamp": t})}
           for i, t in enumerate(stamps)])
    g.save(target)
    g.close()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["gallery", "expire", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _ids(target: Path) -> list[int]:
    g = Gallery.load(target, read_only=True)
    try:
        return g.ids().tolist()
    finally:
        g.close()


def test_expire_removes_exactly_the_items_older_than_the_cutoff(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    sequence = read_manifest(tmp_path / "g")["sequence"]
    code, out, err = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW))
    assert code == 0, err
    assert out == (f"ok: {tmp_path / 'g'}: removed 3, kept 4, kept 2 without a time "
                   f"(items stamped before 2026-11-07T10:00:00Z were removed)\n")
    assert _ids(tmp_path / "g") == [i for i in range(len(STAMPS)) if i not in EXPIRED]  # 1 (at the cut-off) kept
    assert read_manifest(tmp_path / "g")["sequence"] == sequence + 1  # one save: the commit point of the run
    # Run again: nothing more is older, and nothing is saved.
    code, out, _ = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW))
    assert code == 0 and "removed 0, kept 4, kept 2 without a time" in out
    assert read_manifest(tmp_path / "g")["sequence"] == sequence + 1


@pytest.mark.parametrize("age, now, removed", [
    ("720h", "2026-12-07T10:00:00Z", EXPIRED),  # 30 days in hours, ISO time
    ("43200m", "2026-12-07T10:00:00", EXPIRED),  # in minutes; an ISO time without a zone is UTC
    ("1d", str(NOW), [0, 1, 2, 6, 8]),  # id 3 is stamped exactly at NOW - 1d: kept
])
def test_ages_and_times_are_read_alike(tmp_path: Path, capsys, age: str, now: str, removed: list[int]) -> None:
    _gallery(tmp_path / "g")
    code, out, err = _run(capsys, str(tmp_path / "g"), "--older-than", age, "--now", now)
    assert code == 0, err
    assert _ids(tmp_path / "g") == [i for i in range(len(STAMPS)) if i not in removed]
    assert f"removed {len(removed)}," in out


def test_dry_run_counts_and_changes_nothing(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    before = sorted(p.name for p in (tmp_path / "g").iterdir())
    manifest = read_manifest(tmp_path / "g")
    code, out, _ = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW), "--dry-run",
                        "--audit-log", str(tmp_path / "audit.log"))
    assert code == 0
    assert out.startswith(f"dry run: {tmp_path / 'g'}: would have removed 3, kept 4, kept 2 without a time")
    assert out.rstrip().endswith("nothing was changed")
    assert _ids(tmp_path / "g") == list(range(len(STAMPS)))
    assert read_manifest(tmp_path / "g") == manifest
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == before
    assert not (tmp_path / "audit.log").exists()  # a dry run changes nothing, so it records nothing


@pytest.mark.parametrize("age", ["30", "30 days", "1w", "45s", "0d", "-3d", "1h30m", "1.5h", ""])
def test_a_bad_age_is_one_sentence_and_exit_2(tmp_path: Path, capsys, age: str) -> None:
    _gallery(tmp_path / "g")
    with pytest.raises(SystemExit) as exited:
        main(["gallery", "expire", str(tmp_path / "g"), f"--older-than={age}"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --older-than:" in err and "is not an age" in err and "e.g. 30d, 12h or 90m" in err
    assert "Traceback" not in err
    assert _ids(tmp_path / "g") == list(range(len(STAMPS)))


def test_a_bad_now_is_exit_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gallery", "expire", str(tmp_path / "g"), "--older-than", "1d", "--now", "yesterday"])
    assert exited.value.code == 2
    assert "neither Unix seconds" in capsys.readouterr().err


def test_missing_gallery_is_exit_1(tmp_path: Path, capsys) -> None:
    code, out, err = _run(capsys, str(tmp_path / "nothing"), "--older-than", "1d")
    assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1


def test_refused_with_exit_2_while_another_process_writes_the_gallery(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from index import Gallery
        g = Gallery.load({str(tmp_path / 'g')!r}, claim=True)
        print("held", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out, err = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW),
                              "--audit-log", str(tmp_path / "audit.log"))
        assert code == 2 and out == "" and err.count("\n") == 1
        assert f"open for writing by pid {holder.pid}" in err and "nothing was removed" in err
        assert not (tmp_path / "audit.log").exists() or verify(tmp_path / "audit.log").records == 0
        # A dry run only reads: allowed while the writer runs.
        code, out, _ = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW), "--dry-run")
        assert code == 0 and "would have removed 3" in out
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert _ids(tmp_path / "g") == list(range(len(STAMPS)))


def test_audit_record_of_a_run(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    log = tmp_path / "audit" / "audit.log"
    code, _, err = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", "2026-12-07T10:00:00Z",
                        "--audit-log", str(log))
    assert code == 0, err
    code, _, _ = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW + DAY),
                      "--audit-log", str(log))
    assert code == 0
    first, second = (json.loads(line) for line in log.read_text().splitlines())
    assert first["endpoint"] == "gallery expire" and first["key"] == "local-operator"
    assert first["removed"] == EXPIRED and first["removed_count"] == 3
    assert first["kept"] == 4 and first["kept_without_time"] == 2
    assert first["older_than"] == "30d" and first["now"] == "2026-12-07T10:00:00Z"
    assert first["cutoff"] == "2026-11-07T10:00:00Z" and first["gallery"] == str(tmp_path / "g")
    assert "os_user" in first and first["seq"] == 1
    # A day later, ids 1 and 8 (stamped at and just after the old cut-off) are older: one record per run, chained.
    assert second["removed"] == [1, 8] and second["seq"] == 2 and second["prev"] == first["hash"]
    assert verify(log).ok and verify(log).records == 2
    assert main(["audit", "verify", str(log)]) == 0
    code = main(["audit", "show", str(log), "--key", "local-operator"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("gallery expire") == 2 and "removed=[0, 2, 6]" in out


def test_an_unwritable_audit_log_refuses_before_removing(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    (tmp_path / "blocker").write_text("a file where the log's folder should be")
    code, _, err = _run(capsys, str(tmp_path / "g"), "--older-than", "30d", "--now", str(NOW),
                        "--audit-log", str(tmp_path / "blocker" / "audit.log"))
    assert code == 1 and "cannot open the audit log" in err and "nothing was removed" in err
    assert _ids(tmp_path / "g") == list(range(len(STAMPS)))


def test_expire_a_milvus_gallery(tmp_path: Path, capsys) -> None:
    from ci_policy import require

    require("pymilvus", reason="backend='milvus' needs the optional pymilvus + milvus-lite extra")
    require("milvus_lite", reason="Milvus Lite (milvus-lite) is not installed")
    target = tmp_path / "mg"
    target.mkdir()
    g = Gallery.create(8, fingerprint="fp", backend="milvus", uri=target / "milvus.db", collection="expire_cli")
    g.add(np.random.default_rng(0).standard_normal((len(STAMPS), 8)),
          [{"camera": 1, **({} if t is None else {"timestamp": t})} for t in STAMPS])
    g.save(target)
    g.close()
    code, out, err = _run(capsys, str(target), "--older-than", "30d", "--now", str(NOW))
    assert code == 0, err
    assert "removed 3, kept 4, kept 2 without a time" in out
    assert _ids(target) == [i for i in range(len(STAMPS)) if i not in EXPIRED]
