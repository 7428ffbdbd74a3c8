"""``python -m serving ingest`` and ``python -m serving query``: output, reports and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serving.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_ingest_then_query_from_the_command_line(clip_dir: Path, tiny_onnx: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    gallery = tmp_path / "g"
    rc = main(["ingest", "--model", str(tiny_onnx), "--gallery", str(gallery), "--video", str(clip_dir / "cam1.mp4"),
               "--camera", "1", "--start-time", "1700000000", "--report", str(tmp_path / "r.json"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("cam1.mp4: 60 frames, ") and "2 tracks, 8 crops indexed" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["frames"], report["tracks"], report["crops"]) == (60, 2, 8)
    assert report["videos"][0]["start_time"] == 1700000000.0

    rc = main(["query", "--video", str(clip_dir / "cam1.mp4"), "--camera", "3", "--gallery", str(gallery),
               "--model", str(tiny_onnx), "--out", str(tmp_path / "q.json"), "--top-k", "2",
               "--sheet", str(tmp_path / "s.html"), "--no-progress"])
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "q.json").read_text())
    assert rc == 0 and "2 track(s) in cam1.mp4" in out and out.count("#1 camera 1 track cam1-") == 2
    assert len(result["tracks"]) == 2 and all(len(t["results"]) == 2 for t in result["tracks"])
    # The query clip is the gallery clip: each track finds itself first, with a cosine of one.
    for track in result["tracks"]:
        assert track["results"][0]["score"] > 0.99
    assert (tmp_path / "s.html").stat().st_size > 1000


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "serving", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_exit_codes_and_one_sentence_errors(clip_dir: Path, tiny_onnx: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "cam9.mp4"
    garbage.write_bytes(np.random.default_rng(2).bytes(3000))
    common = ["--model", str(tiny_onnx), "--gallery", str(tmp_path / "g")]

    bad = _run("ingest", *common, "--video", str(garbage), "--camera", "9")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cam9.mp4" in errors[0]

    missing = _run("ingest", *common, "--video", str(clip_dir / "cam1.mp4"))
    assert missing.returncode == 2 and "--camera" in missing.stderr and "Traceback" not in missing.stderr

    named = _run("ingest", *common, "--video", str(clip_dir / "cam1.mp4"), "--camera", "front")
    assert named.returncode == 1 and "error: --camera must be the camera's number" in named.stderr

    query = _run("query", "--video", str(clip_dir / "cam1.mp4"), "--camera", "3", "--gallery", str(tmp_path / "none"),
                 "--model", str(tiny_onnx), "--out", str(tmp_path / "q.json"))
    assert query.returncode == 1 and "is not a gallery" in query.stderr and "Traceback" not in query.stderr

    fine = _run("ingest", *common, "--video", str(clip_dir / "still.mp4"), "--camera", "1", "--no-progress")
    assert fine.returncode == 0 and "0 tracks (no people found), 0 crops indexed" in fine.stdout
