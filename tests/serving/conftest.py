"""Fixtures for the HTTP server tests, built on the session fixtures of ``tests/conftest.py``.

``tiny_gallery`` holds the RGB cameras (1, 2, 4, 5) of the test identities of ``sysu_root``; the queries
here are the infrared crops (cameras 3 and 6) of those same identities, as in SYSU-MM01's protocol.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Query:
    path: Path
    pid: int
    camera: int


@pytest.fixture(scope="session")
def serving_embedder(tiny_onnx: Path) -> Any:
    """The tiny model loaded the way the server loads it (for offline reference computations)."""
    from serving.embedders import load_embedder

    embedder = load_embedder(tiny_onnx)
    yield embedder
    embedder.close()


@pytest.fixture(scope="session")
def ir_queries(sysu_root: Path, tiny_gallery: Path) -> list[Query]:
    """Two infrared crops per test identity and IR camera (3, 6), sorted for determinism."""
    test_ids = [int(t) for t in (sysu_root / "exp" / "test_id.txt").read_text().replace("\n", ",").split(",")
                if t.strip()]
    queries = []
    for pid in sorted(test_ids):
        for cam in (3, 6):
            files = sorted((sysu_root / f"cam{cam}" / f"{pid:04d}").glob("*.jpg"))[:2]
            queries += [Query(f, pid, cam) for f in files]
    assert queries, f"no infrared test crops under {sysu_root}"
    return queries


@pytest.fixture
def gallery_copy(tiny_gallery: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the session gallery (mutation tests must not touch the shared one)."""
    return Path(shutil.copytree(tiny_gallery, tmp_path / "gallery"))


@pytest.fixture
def make_client(tiny_onnx: Path, tiny_gallery: Path) -> Iterator[Callable[..., Any]]:
    """Factory: ``make_client(**settings)`` -> an entered ``TestClient`` (lifespan run, model loaded).

    Defaults: the tiny model, the shared gallery, saving disabled (the shared gallery is read-only by
    convention); pass ``gallery=`` a copy and ``save_on_mutation=True`` to test persistence. Gallery changes
    are allowed without a key (``allow_unauthenticated_changes``) unless a test configures keys or turns it off:
    most tests exercise the API, the access tests its rules.
    """
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.core.config import Settings

    with ExitStack() as stack:
        def make(*, embedder: Any = None, gallery_obj: Any = None, **overrides: Any) -> TestClient:
            values = {"model": tiny_onnx, "gallery": tiny_gallery, "save_on_mutation": False,
                      "allow_unauthenticated_changes": True, **overrides}
            app = create_app(Settings(**values), embedder=embedder, gallery=gallery_obj)
            return stack.enter_context(TestClient(app, base_url="http://localhost"))

        yield make
