"""The audit trail on disk: chained records, verification that names the first bad one, rotation, crashes."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from serving.core import audit_log
from serving.core.audit_log import GENESIS, AuditError, AuditLog, AuditWriter, log_files, record_hash, verify


def _write(path: Path, n: int, **kwargs) -> None:
    log = AuditLog(path, **kwargs)
    for i in range(n):
        log.append({"endpoint": "/search", "key": "ops", "results": [i, i + 1]})
    log.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_records_are_chained_and_numbered(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 3)
    records = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert [r["prev"] for r in records[1:]] == [r["hash"] for r in records[:-1]]
    assert all(r["hash"] == record_hash(r) for r in records)
    assert verify(path).ok and verify(path).records == 3


def test_a_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2)
    _write(path, 2)
    assert [json.loads(line)["seq"] for line in _lines(path)] == [1, 2, 3, 4]
    assert verify(path).ok


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    """Two writers would each chain from the same last record and fork the log: the second is refused."""
    path = tmp_path / "audit.log"
    first = AuditLog(path)
    first.append({"endpoint": "/search"})
    with pytest.raises(AuditError, match="being written by another process"):
        AuditLog(path)
    first.close()
    second = AuditLog(path)
    second.append({"endpoint": "gallery expire"})
    second.close()
    assert verify(path).ok and verify(path).records == 2


@pytest.mark.parametrize("tamper, named", [
    ("edit", "record 3 (audit.log line 3) was altered"),
    ("delete", "record 3 is missing"),
    ("swap", "expected record 3 at audit.log line 3, found record 4"),
    ("cut", "the log ends at record 5 but 6 were written"),
    ("garbage", "audit.log line 3 is not an audit record"),
])
def test_verify_names_the_first_bad_record(tmp_path: Path, tamper: str, named: str) -> None:
    path = tmp_path / "audit.log"
    _write(path, 6)
    lines = _lines(path)
    if tamper == "edit":
        lines[2] = lines[2].replace('"key":"ops"', '"key":"eve"')
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "cut":
        lines = lines[:-1]
    else:
        lines[2] = "not json"
    path.write_text("\n".join(lines) + "\n")
    verdict = verify(path)
    assert not verdict.ok
    assert named in verdict.problem


def test_a_rehashed_edit_still_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 4)
    lines = _lines(path)
    record = json.loads(lines[1])
    record["results"] = [99]
    record["hash"] = record_hash(record)  # the forger recomputes this record's hash, not the next one's prev
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    assert "record 3 (audit.log line 3) does not follow record 2" in verify(path).problem


def test_rotation_keeps_one_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 30, max_bytes=2000)
    files = log_files(path)
    assert len(files) >= 3 and files[-1] == path and files[0].name == "audit.log.000001"
    assert all(f.stat().st_size < 2000 + 400 for f in files)
    assert verify(path).ok and verify(path).records == 30
    # a record removed from a rotated file is found there
    first = files[0]
    lines = _lines(first)
    first.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert "record 2 is missing" in verify(path).problem


def test_a_torn_last_line_is_dropped_on_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _write(path, 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 3, "half a rec')
    log = AuditLog(path)
    assert log.last_seq == 2
    log.append({"endpoint": "/search"})
    log.close()
    assert verify(path).ok and verify(path).records == 3


def test_a_failed_write_raises_and_counts_nothing(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.append({"n": 1})

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_log.os, "fsync", full)
    with pytest.raises(AuditError, match="cannot write the audit log"):
        log.append({"n": 2})
    monkeypatch.undo()
    log.append({"n": 3})
    log.close()
    records = [json.loads(line) for line in _lines(path)]
    assert [r["n"] for r in records] == [1, 3] and [r["seq"] for r in records] == [1, 2]
    assert verify(path).ok


def test_the_group_writer_commits_concurrent_records_in_order(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "audit.log"
    calls = []
    real = os.fsync
    monkeypatch.setattr(audit_log.os, "fsync", lambda fd: (calls.append(fd), real(fd)))

    async def main() -> list[dict]:
        writer = AuditWriter(AuditLog(path))
        try:
            return await asyncio.gather(*[writer.write({"endpoint": "/search", "n": i}) for i in range(100)])
        finally:
            writer.close()

    records = asyncio.run(main())
    assert sorted(r["seq"] for r in records) == list(range(1, 101))
    assert verify(path).ok and verify(path).records == 100
    assert len(calls) < 100  # records that arrived together shared an fsync


def test_no_log_is_a_problem(tmp_path: Path) -> None:
    assert "no audit log" in verify(tmp_path / "missing.log").problem
