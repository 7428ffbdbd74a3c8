"""The server's retention schedule (``--expire-older-than``, ``--expire-every``): runs through the durable delete
path, one INFO line per run, one audit record (key ``retention``) per run that removed items."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import Gallery
from serving.core.audit_log import verify
from serving.runtime.expiry import ScheduledExpiry

DAY = 86400.0


def _gallery(target: Path, embedder: Any, stamps: list[float | None]) -> None:
    """A gallery for the served model (its fingerprint and size) whose items carry ``stamps``."""
    g = Gallery.create(int(embedder.dim), fingerprint=embedder.fingerprint, family=getattr(embedder, "family", None))
    g.add(np.random.default_rng(0).standard_normal((len(stamps), int(embedder.dim))),
          [{"camera": 1 + i % 2, "source": f"cam/{i}.jpg", **({} if t is None else {"timestamp": t})}
           for i, t in enumerate(stamps)])
    g.save(target)
    g.close()


def _saved_ids(target: Path) -> list[int]:
    g = Gallery.load(target, read_only=True)
    try:
        return g.ids().tolist()
    finally:
        g.close()


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_server_expires_at_start_durably_and_audited(make_client, serving_embedder, tmp_path: Path,
                                                         caplog) -> None:
    now = time.time()
    # 0: 40 days old, 1: 29 days, 2: no time, 3: 31 days, 4: an hour old.
    _gallery(tmp_path / "g", serving_embedder, [now - 40 * DAY, now - 29 * DAY, None, now - 31 * DAY, now - 3600])
    audit = tmp_path / "audit.log"
    caplog.set_level(logging.INFO, logger="serving.runtime.expiry")
    client = make_client(gallery=tmp_path / "g", save_on_mutation=True, expire_older_than="30d",
                         expire_every="1h", audit_log=audit)
    runtime = client.app.state.runtime  # the first run starts with the server, in the background
    _wait(lambda: runtime.size == 3)
    assert client.get("/gallery/stats").json()["size"] == 3
    assert _saved_ids(tmp_path / "g") == [1, 2, 4]  # on disk: the run was one durable change
    _wait(lambda: audit.exists() and audit.read_text().strip())
    (record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert record["endpoint"] == "retention expire" and record["key"] == "retention"
    assert record["removed"] == [0, 3] and record["removed_count"] == 2
    assert record["kept"] == 2 and record["kept_without_time"] == 1 and record["older_than"] == "30d"
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.runtime.expiry"]
    assert any("removed at start and every 1h" in line for line in lines)
    assert sum(line.startswith("retention: removed 2, kept 2, kept 1 without a time") for line in lines) == 1
    assert verify(audit).ok


def test_runs_repeat_on_the_schedule_with_a_fake_clock(make_client, serving_embedder, tmp_path: Path,
                                                       caplog) -> None:
    t0 = 1_796_637_600.0
    _gallery(tmp_path / "g", serving_embedder, [t0 - 40 * DAY, t0 - 25 * DAY, t0 - 10 * DAY, None])
    client = make_client(gallery=tmp_path / "g", save_on_mutation=True)  # no schedule from the settings
    runtime = client.app.state.runtime
    clock = [t0]
    task = ScheduledExpiry(runtime, 30 * DAY, 0.05, clock=lambda: clock[0], label="30d")
    caplog.set_level(logging.INFO, logger="serving.runtime.expiry")
    client.portal.call(task.start)
    try:
        _wait(lambda: task.runs >= 2)
        assert _saved_ids(tmp_path / "g") == [1, 2, 3]
        clock[0] = t0 + 6 * DAY  # id 1 (25 days old then) is now 31 days old
        _wait(lambda: _saved_ids(tmp_path / "g") == [2, 3])
        clock[0] = t0 + 21 * DAY
        _wait(lambda: _saved_ids(tmp_path / "g") == [3])  # the item without a time stays for ever
        runs = task.runs
        _wait(lambda: task.runs >= runs + 2)
        assert task.last is not None and task.last.removed == [] and task.last.unstamped == 1
    finally:
        client.portal.call(task.stop)
    stopped = task.runs
    time.sleep(0.2)
    assert task.runs == stopped  # stop() ended the schedule
    assert runtime.size == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "serving.runtime.expiry"]
    assert sum(line.startswith("retention: removed 1,") for line in lines) == 3
    assert all(line.startswith("retention: removed ") for line in lines)


def test_a_run_whose_save_fails_removes_nothing_and_the_schedule_goes_on(make_client, serving_embedder,
                                                                         tmp_path: Path, caplog,
                                                                         monkeypatch) -> None:
    import errno

    t0 = 1_796_637_600.0
    _gallery(tmp_path / "g", serving_embedder, [t0 - 40 * DAY, t0])
    client = make_client(gallery=tmp_path / "g", save_on_mutation=True)
    runtime = client.app.state.runtime
    task = ScheduledExpiry(runtime, 30 * DAY, 3600, clock=lambda: t0, label="30d")
    real_save = runtime.gallery.save

    def full_disk(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runtime.gallery, "save", full_disk)
    caplog.set_level(logging.INFO, logger="serving.runtime.expiry")
    assert client.portal.call(task.run_once) is None
    assert runtime.gallery.ids().tolist() == [0, 1]  # undone in memory too: memory and disk agree
    assert _saved_ids(tmp_path / "g") == [0, 1] and runtime.size == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("retention: nothing removed: the gallery could not be saved") for w in warnings)
    monkeypatch.setattr(runtime.gallery, "save", real_save)
    report = client.portal.call(task.run_once)
    assert report is not None and report.removed == [0]
    assert _saved_ids(tmp_path / "g") == [1] and runtime.size == 1


def test_server_and_cli_share_one_audit_chain(tiny_onnx: Path, serving_embedder, tmp_path: Path, ir_queries) -> None:
    from serving.__main__ import main

    now = time.time()
    _gallery(tmp_path / "g", serving_embedder, [now - 40 * DAY, now - 20 * DAY, now - 5 * DAY, None])
    audit = tmp_path / "audit.log"
    image = ir_queries[0].path.read_bytes()

    def search(client: Any) -> None:
        assert client.post("/search", files={"image": ("q.jpg", image, "image/jpeg")}).status_code == 200

    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core.config import Settings

    def serve(**extra: Any) -> TestClient:
        settings = Settings(model=tiny_onnx, gallery=tmp_path / "g",
                            audit_log=audit, allow_unauthenticated_changes=True, **extra)
        return TestClient(create_app(settings), base_url="http://localhost")

    with serve(expire_older_than="30d") as client:
        search(client)
        _wait(lambda: client.app.state.runtime.size == 3)
    assert main(["gallery", "expire", str(tmp_path / "g"), "--older-than", "10d", "--audit-log", str(audit)]) == 0
    with serve() as client:
        search(client)
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    endpoints = [r["endpoint"] for r in records]
    assert sorted(endpoints[:2]) == ["POST /search", "retention expire"]  # the search and the first run race
    assert endpoints[2:] == ["gallery expire", "POST /search"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[2]["removed"] == [1] and records[2]["key"] == "local-operator"
    assert verify(audit).ok and verify(audit).records == 4
    assert main(["audit", "verify", str(audit)]) == 0
    assert _saved_ids(tmp_path / "g") == [2, 3]


def test_settings_flags_and_environment(monkeypatch, tmp_path: Path) -> None:
    from serving.server import build_parser, settings_from_args
    from xmreid.errors import UserError

    args = build_parser().parse_args(["--model", "m.onnx", "--gallery", str(tmp_path), "--expire-older-than", "30d",
                                      "--expire-every", "90m"])
    settings = settings_from_args(args)
    assert settings.expire_older_than == "30d" and settings.expire_every == "90m"
    monkeypatch.setenv("XMREID_EXPIRE_OLDER_THAN", "12h")
    monkeypatch.setenv("XMREID_EXPIRE_EVERY", "2h")
    settings = settings_from_args(build_parser().parse_args(["--model", "m.onnx", "--gallery", str(tmp_path)]))
    assert settings.expire_older_than == "12h" and settings.expire_every == "2h"
    monkeypatch.delenv("XMREID_EXPIRE_OLDER_THAN")
    monkeypatch.delenv("XMREID_EXPIRE_EVERY")
    settings = settings_from_args(build_parser().parse_args(["--model", "m.onnx", "--gallery", str(tmp_path)]))
    assert settings.expire_older_than is None and settings.expire_every == "1h"  # off by default
    for argv, expected in ((["--expire-older-than", "3 days"], "is not an age"),
                           (["--expire-every", "30s"], "is not an age"),
                           (["--expire-older-than", "30d", "--read-only"], "needs a writable gallery")):
        with pytest.raises(UserError, match=expected):
            settings_from_args(build_parser().parse_args(["--model", "m.onnx", "--gallery", str(tmp_path), *argv]))


def test_no_schedule_without_the_setting(make_client) -> None:
    client = make_client()
    assert not any(t.get_name() == "retention" for t in client.portal.call(_tasks))
    assert client.get("/healthz").status_code == 200


async def _tasks() -> set[Any]:
    import asyncio

    return asyncio.all_tasks()
