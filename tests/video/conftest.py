"""Fixtures of the video tests: short synthetic clips (``video_clips``) and the session's tiny exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from video_clips import Walker, render_clip, two_walkers, write_gt


@pytest.fixture(scope="session")
def video_embedder(tiny_onnx: Path) -> Any:
    """The tiny model, loaded once (ingestion and queries accept a loaded embedder)."""
    from serving.embedders import load_embedder

    embedder = load_embedder(tiny_onnx, intra_op_threads=1)
    yield embedder
    embedder.close()


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cam1.mp4`` (two people crossing, 60 frames) with ``cam1.txt`` (its MOT ground truth), ``still.mp4``
    (30 frames, nobody) and ``empty.avi`` (a valid container without frames)."""
    import cv2

    root = tmp_path_factory.mktemp("clips")
    write_gt(root / "cam1.txt", render_clip(root / "cam1.mp4", two_walkers(), 60, seed=1))
    render_clip(root / "still.mp4", [], 30, seed=2)
    writer = cv2.VideoWriter(str(root / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    writer.release()
    return root


@pytest.fixture(scope="session")
def people_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two "gallery camera" clips and one "query camera" clip of the same three people, each with ground truth.

    People walk one at a time, so each clip's tracks are clean: ``gal/cam1.mp4``, ``gal/cam2.mp4`` and
    ``query.mp4`` (another background, other paths).
    """
    root = tmp_path_factory.mktemp("people")
    for name, seed, shift in (("gal/cam1", 11, 0), ("gal/cam2", 12, 20), ("query", 13, 40)):
        walkers = [Walker(pid, 30 * i, 30 * i + 26, (10 + shift, 40 + 20 * i), (200 + shift // 2, 50 + 20 * i), 120)
                   for i, pid in enumerate((1, 2, 3))]
        write_gt(root / f"{name}.txt", render_clip(root / f"{name}.mp4", walkers, 95, seed=seed))
    return root
