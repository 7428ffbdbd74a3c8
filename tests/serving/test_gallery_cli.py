"""``python -m serving gallery check|repair|copy``: one line, exit 0 when sound, 2 when damaged."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index import Gallery
from index.manifest import INDEX_FILE, METADATA_FILE
from index.persist import read_manifest
from serving.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def _gallery(target: Path, n: int = 300) -> None:
    rng = np.random.default_rng(0)
    gallery = Gallery.create(16, fingerprint="fp")
    gallery.add(rng.standard_normal((n, 16)), [{"camera": 1 + i % 3, "source": f"cam/{i:05d}.jpg"} for i in range(n)])
    gallery.save(target)
    gallery.close()


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["gallery", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _data(target: Path) -> Path:
    return target / read_manifest(target)["data_dir"]


def test_check_a_sound_gallery(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    code, out, _ = _run(capsys, "check", str(tmp_path / "g"))
    assert code == 0 and out.startswith("ok: ") and "300 items" in out and "checksums verified" in out
    assert out.count("\n") == 1


def test_check_and_repair_damaged_vectors(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    index_file = _data(tmp_path / "g") / INDEX_FILE
    raw = bytearray(index_file.read_bytes())
    raw[5000:5100] = b"\xff" * 100
    index_file.write_bytes(bytes(raw))
    before = sorted(p.name for p in (tmp_path / "g").iterdir())
    code, out, err = _run(capsys, "check", str(tmp_path / "g"))
    assert code == 2 and out == "" and err.startswith("error: damaged: ") and err.count("\n") == 1
    assert "index.faiss: sha256 does not match" in err
    code, _, err = _run(capsys, "repair", str(tmp_path / "g"))
    assert code == 2 and err.startswith("error: cannot repair: ") and "re-index the images" in err
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == before  # nothing was changed


def test_repair_adds_checksums_to_an_old_gallery(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    manifest.pop("checksums")
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = _run(capsys, "check", str(tmp_path / "g"))
    assert code == 0 and out.startswith("warning: ") and "no checksums" in out
    code, out, _ = _run(capsys, "repair", str(tmp_path / "g"))
    assert code == 0 and "added checksums" in out
    assert set(read_manifest(tmp_path / "g")["checksums"]) == {INDEX_FILE, METADATA_FILE}
    code, out, _ = _run(capsys, "repair", str(tmp_path / "g"))
    assert code == 0 and "nothing to repair" in out


def test_repair_rebuilds_damaged_sqlite_indexes(tmp_path: Path, capsys) -> None:
    target = tmp_path / "g"
    _gallery(target, n=3000)
    db = _data(target) / METADATA_FILE
    conn = sqlite3.connect(db)
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'items_source'").fetchone()[0]
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(db, "r+b") as handle:  # garbage over the source index's root page; the table is intact
        handle.seek((root - 1) * page)
        handle.write(np.random.default_rng(1).bytes(page))
    code, _, err = _run(capsys, "check", str(target))
    assert code == 2 and METADATA_FILE in err
    code, out, _ = _run(capsys, "repair", str(target))
    assert code == 0 and f"rebuilt {METADATA_FILE} from its 3000 readable rows" in out, out
    code, out, _ = _run(capsys, "check", str(target))
    assert code == 0 and out.startswith("ok: ") and "SQLite integrity ok" in out
    repaired = Gallery.load(target)
    assert len(repaired) == 3000 and repaired.find_sources(["cam/01234.jpg"]) == {"cam/01234.jpg": 1234}


def test_repair_refuses_while_another_process_writes(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from index import Gallery
        g = Gallery.load({str(tmp_path / 'g')!r}, claim=True)
        print("held", flush=True)
        time.sleep(60)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        code, _, err = _run(capsys, "repair", str(tmp_path / "g"))
        assert time.perf_counter() - started < 1.0
        assert code == 1 and f"pid {holder.pid}" in err and err.count("\n") == 1
        code, out, _ = _run(capsys, "check", str(tmp_path / "g"))  # readers are fine, and say who writes
        assert code == 0 and f"written by pid {holder.pid}" in out
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_copy_refuses_a_non_empty_target(tmp_path: Path, capsys) -> None:
    _gallery(tmp_path / "g")
    code, out, _ = _run(capsys, "copy", str(tmp_path / "g"), str(tmp_path / "c"))
    assert code == 0 and "POST /gallery/reload" in out
    assert Gallery.load(tmp_path / "c").origin["sequence"] == 1
    code, _, err = _run(capsys, "copy", str(tmp_path / "g"), str(tmp_path / "c"))
    assert code == 1 and "not empty" in err


def test_usage_errors(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["gallery", "polish", "x"])
    assert exited.value.code == 2
    code, _, err = _run(capsys, "check", "/nonexistent/gallery")
    assert code == 1 and "does not exist" in err
