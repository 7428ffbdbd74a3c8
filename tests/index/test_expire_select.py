"""``Gallery.stamped_before`` / ``unstamped_count``: what retention selects, on FAISS and on Milvus Lite.

The cut-off is strict: an item stamped exactly at it is not before it (kept), items without a timestamp
are never selected and are counted apart.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from ci_policy import require

from index import Gallery, GalleryError

DIM = 8
T0 = 1_750_000_000.0
# i -> timestamp: before, exactly at, a millisecond before, after the cut-off T0, and none.
STAMPS = [T0 - 86400, T0, T0 - 0.001, T0 + 1, None, T0 - 1, None, T0 + 86400]
EXPIRED = [0, 2, 5]
_names = itertools.count()


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | str]:
    require("pymilvus", reason="backend='milvus' needs the optional pymilvus + milvus-lite extra")
    server = os.environ.get("XMREID_TEST_MILVUS_URI")
    if server:
        yield server
        return
    require("milvus_lite", reason="Milvus Lite (milvus-lite) is not installed")
    path = tmp_path_factory.mktemp("milvus") / "expire.db"
    yield path
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))


@pytest.fixture(params=["faiss", "milvus"])
def gallery(request: pytest.FixtureRequest) -> Iterator[Gallery]:
    if request.param == "faiss":
        g = Gallery.create(DIM, fingerprint="fp")
    else:
        db = request.getfixturevalue("milvus_db")
        g = Gallery.create(DIM, fingerprint="fp", backend="milvus", uri=db, collection=f"expire{next(_names)}")
    rng = np.random.default_rng(0)
    g.add(rng.standard_normal((len(STAMPS), DIM)),
          [{"camera": 1 + i % 2, **({} if t is None else {"timestamp": t})} for i, t in enumerate(STAMPS)])
    yield g
    if request.param == "milvus":
        g.drop_collection()
    g.close()


def test_stamped_before_is_strict_and_skips_unstamped(gallery: Gallery) -> None:
    got = gallery.stamped_before(T0)
    assert got.dtype == np.int64 and got.tolist() == EXPIRED  # ids 1 (exactly T0) and 3, 7 (later) kept
    assert gallery.unstamped_count() == 2
    assert gallery.stamped_before(T0 + 0.5).tolist() == [0, 1, 2, 5]  # the item at T0 is before T0 + 0.5
    assert gallery.stamped_before(T0 - 86400).tolist() == []  # nothing is strictly before the oldest
    assert gallery.stamped_before(T0 + 10 * 86400).tolist() == [0, 1, 2, 3, 5, 7]  # never the unstamped 4, 6


def test_selection_follows_removals(gallery: Gallery) -> None:
    gallery.remove([0, 4])
    assert gallery.stamped_before(T0).tolist() == [2, 5]
    assert gallery.unstamped_count() == 1


def test_selection_survives_save_and_load(tmp_path: Path) -> None:
    g = Gallery.create(DIM, fingerprint="fp")
    g.add(np.random.default_rng(1).standard_normal((len(STAMPS), DIM)),
          [{"camera": 1, **({} if t is None else {"timestamp": t})} for t in STAMPS])
    g.save(tmp_path / "g")
    g.close()
    loaded = Gallery.load(tmp_path / "g", read_only=True)
    assert loaded.stamped_before(T0).tolist() == EXPIRED and loaded.unstamped_count() == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "yesterday", None, True])
def test_cutoff_must_be_a_finite_number(bad: object) -> None:
    g = Gallery.create(DIM)
    with pytest.raises(GalleryError, match="cutoff must be a finite number of Unix seconds"):
        g.stamped_before(bad)  # type: ignore[arg-type]


def test_empty_gallery_selects_nothing() -> None:
    g = Gallery.create(DIM)
    assert g.stamped_before(T0).tolist() == [] and g.unstamped_count() == 0
