"""The Gallery contract, run against both backends: FAISS (in process) and Milvus (Milvus Lite, embedded).

Every test takes ``make`` (a factory for an empty gallery on one backend) and checks behaviour against
brute-force references, so the two backends are held to the same answers: exact kinds equal brute force,
approximate kinds reach a recall floor, filters, removal, metadata and save/load behave the same.

Milvus Lite starts one in-process server per data file (~1-2 s), so the whole module shares one file and
gives each gallery its own collection.
"""

from __future__ import annotations

import builtins
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from ci_policy import require
from index_helpers import brute_force, clustered, recall_at

from index import Gallery, GalleryError, StaleGalleryError, UnknownIdsError
from index.manifest import read_manifest

BACKENDS = ["faiss", "milvus"]
DIM = 24
T0 = 1_700_000_000.0
# Options per (backend, kind) for small galleries: FAISS IVF trains once it holds train_size vectors;
# Milvus fixes nlist at creation and trains each sealed segment itself.
OPTIONS = {("faiss", "ivf_flat"): {"nlist": 16, "nprobe": 8, "train_size": 300},
           ("milvus", "ivf_flat"): {"nlist": 16, "nprobe": 8},
           ("faiss", "hnsw"): {"hnsw_m": 16, "ef_search": 64}, ("milvus", "hnsw"): {"hnsw_m": 16, "ef_search": 64}}

Factory = Callable[..., Gallery]


@pytest.fixture(scope="module")
def milvus_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path | str]:
    """A Milvus Lite file, or the Milvus server named by ``XMREID_TEST_MILVUS_URI`` (e.g. http://host:19530)."""
    require("pymilvus", reason="backend='milvus' needs the optional pymilvus + milvus-lite extra")
    server = os.environ.get("XMREID_TEST_MILVUS_URI")
    if server:
        yield server  # collections are named per test; drop them on the server when done
        return
    require("milvus_lite", reason="Milvus Lite (milvus-lite) is not installed")
    path = tmp_path_factory.mktemp("milvus") / "contract.db"
    yield path
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))  # stop the embedded server with the module


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


_names = itertools.count()


@pytest.fixture
def make(backend: str, request: pytest.FixtureRequest) -> Factory:
    """``make(kind="flat", fingerprint="fp", **options)`` -> an empty gallery on the parametrized backend."""
    if backend == "faiss":
        return lambda kind="flat", fingerprint="fp", **opts: Gallery.create(
            DIM, kind, fingerprint, **OPTIONS.get((backend, kind), {}), **opts)
    db = request.getfixturevalue("milvus_db")
    return lambda kind="flat", fingerprint="fp", **opts: Gallery.create(
        DIM, kind, fingerprint, backend="milvus", uri=db, collection=f"g{next(_names)}",
        **OPTIONS.get((backend, kind), {}), **opts)


def _meta(n: int) -> list[dict]:
    """Cameras 1-4; every 5th item without a timestamp; labels alternate int / str / None."""
    return [{"camera": 1 + i % 4, "person_label": [i, f"p{i}", None][i % 3], "source": f"cam{1 + i % 4}/{i:04d}.jpg",
             "timestamp": None if i % 5 == 0 else T0 + i, "extra": {"i": i}} for i in range(n)]


def _filtered_truth(x: np.ndarray, q: np.ndarray, k: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(keep)
    return brute_force(x[rows], q, k, ids=rows)


# ----------------------------------------------------------------- exact search
def test_exact_search_equals_brute_force(make: Factory) -> None:
    x, q = clustered(300, DIM, seed=1, n_queries=8)
    gallery = make("flat")
    ids = gallery.add(x, _meta(300))
    assert ids.tolist() == list(range(300)) and len(gallery) == 300
    scores, found = gallery.search(q, 10)
    ref_s, ref_i = brute_force(x, q, 10)
    np.testing.assert_array_equal(found, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    _one_s, one_i = gallery.search(q[0], 3)  # a single [dim] query is a batch of one
    np.testing.assert_array_equal(one_i, ref_i[:1, :3])


def test_camera_and_time_filters_equal_brute_force_on_the_subset(make: Factory) -> None:
    x, q = clustered(240, DIM, seed=2, n_queries=5)
    meta = _meta(240)
    gallery = make("flat")
    gallery.add(x, meta)
    cams = np.array([m["camera"] for m in meta])
    stamps = np.array([np.nan if m["timestamp"] is None else m["timestamp"] for m in meta])
    cases = [
        ({"cameras": [2, 4]}, np.isin(cams, [2, 4])),
        ({"cameras": 3}, cams == 3),
        # inclusive bounds: T0 + 50 and T0 + 120 are both in
        ({"time_range": (T0 + 50, T0 + 120)}, (stamps >= T0 + 50) & (stamps <= T0 + 120)),
        ({"time_range": (None, T0 + 30)}, stamps <= T0 + 30),
        ({"time_range": (None, None)}, ~np.isnan(stamps)),  # an open window still needs a timestamp
        ({"cameras": [1], "time_range": (T0 + 100, None)}, (cams == 1) & (stamps >= T0 + 100)),
    ]
    for kwargs, keep in cases:
        scores, found = gallery.search(q, 8, **kwargs)
        ref_s, ref_i = _filtered_truth(x, q, 8, keep)
        np.testing.assert_array_equal(found, ref_i, err_msg=str(kwargs))
        np.testing.assert_allclose(scores, ref_s, atol=1e-5, err_msg=str(kwargs))


def test_short_results_are_padded_with_minus_one_and_minus_inf(make: Factory) -> None:
    x, q = clustered(12, DIM, seed=3, n_queries=2)
    gallery = make("flat")
    empty_s, empty_i = gallery.search(q, 4)
    assert (empty_i == -1).all() and np.isneginf(empty_s).all()
    gallery.add(x, _meta(12))
    scores, found = gallery.search(q, 20)
    assert found.shape == (2, 20)
    assert sorted(found[0, :12].tolist()) == list(range(12)) and (found[:, 12:] == -1).all()
    assert np.isneginf(scores[:, 12:]).all() and np.isfinite(scores[:, :12]).all()
    # camera 1 holds items 0, 4, 8 (3 items): a filter with fewer matches than k pads too
    _, found = gallery.search(q, 5, cameras=[1])
    assert sorted(found[0, :3].tolist()) == [0, 4, 8] and (found[:, 3:] == -1).all()
    _, found = gallery.search(q, 5, cameras=[99])
    assert (found == -1).all()
    _, found = gallery.search(q, 5, cameras=[])
    assert (found == -1).all()


# ----------------------------------------------------------------- mutation and metadata
def test_remove_get_and_ids_are_never_reused(make: Factory) -> None:
    x, q = clustered(60, DIM, seed=4, n_queries=4)
    gallery = make("flat")
    gallery.add(x, _meta(60))
    assert gallery.remove([5, 7, 7, 30]) == 3
    assert len(gallery) == 57 and 7 not in gallery and 8 in gallery
    _, found = gallery.search(np.concatenate([q, x[[5, 7, 30]]]), 60)
    assert not np.isin(found, [5, 7, 30]).any()
    assert sorted(found[0][found[0] >= 0].tolist()) == sorted(set(range(60)) - {5, 7, 30})
    with pytest.raises(UnknownIdsError) as err:
        gallery.remove([8, 5, 1000])
    assert err.value.ids == [5, 1000] and 8 in gallery  # nothing removed
    assert gallery.remove([8, 5], missing="ignore") == 1
    with pytest.raises(UnknownIdsError):
        gallery.get([5])
    assert gallery.get([5, 9], missing="none")[0] is None
    new = gallery.add(x[:2], _meta(2))
    assert new.tolist() == [60, 61]  # ids of removed items are not handed out again
    assert gallery.ids().tolist() == sorted(set(range(62)) - {5, 7, 8, 30})


def test_search_hits_are_search_with_the_metadata_of_get(make: Factory) -> None:
    x, q = clustered(40, DIM, seed=9, n_queries=3)
    gallery = make("flat")
    gallery.add(x, _meta(40))
    gallery.remove([1, 2])
    scores, found = gallery.search(q, 50, cameras=[1, 2])
    hits = gallery.search_hits(q, 50, cameras=[1, 2])
    assert len(hits) == 3
    for row_s, row_i, row_h in zip(scores, found, hits):
        keep = row_i >= 0  # the -1 padding is left out
        assert [h["id"] for h in row_h] == row_i[keep].tolist()
        np.testing.assert_allclose([h["score"] for h in row_h], row_s[keep], atol=1e-6)
        assert [{k: v for k, v in h.items() if k != "score"} for h in row_h] == gallery.get(row_i[keep])
    assert gallery.search_hits(q[0], 3, cameras=[]) == [[]]


def test_metadata_round_trips_with_types(make: Factory) -> None:
    x, _ = clustered(3, DIM, seed=5)
    gallery = make("flat")
    gallery.add(x, [{"camera": 2, "person_label": 17, "source": "cam2/a.jpg", "timestamp": "2024-05-01T12:00:00",
                     "extra": {"tags": ["a", "é"], "score": 0.5}},
                    {"camera": 5, "person_label": "17", "source": 'we"ird\\name.jpg'},
                    {"camera": 2}])
    first, second, third = gallery.get([0, 1, 2])
    assert first == {"id": 0, "camera": 2, "person_label": 17, "source": "cam2/a.jpg", "timestamp": 1714564800.0,
                     "extra": {"tags": ["a", "é"], "score": 0.5}, "track_id": None}
    assert second["person_label"] == "17" and isinstance(second["person_label"], str)
    assert second["timestamp"] is None and second["extra"] == {}
    assert third == {"id": 2, "camera": 2, "person_label": None, "source": None, "timestamp": None, "extra": {},
                     "track_id": None}
    assert gallery.find_sources(['we"ird\\name.jpg', "cam2/a.jpg", "missing.jpg"]) == {
        'we"ird\\name.jpg': 1, "cam2/a.jpg": 0}
    stats = gallery.stats()
    assert stats["count"] == 3 and stats["cameras"] == {2: 2, 5: 1} and stats["labelled"] == 2
    assert stats["next_id"] == 3 and stats["fingerprint"] == "fp"


def test_bad_input_changes_nothing(make: Factory) -> None:
    x, _ = clustered(4, DIM, seed=6)
    gallery = make("flat")
    gallery.add(x[:2], _meta(2))
    with pytest.raises(GalleryError, match="shape"):
        gallery.add(x[:, :5], _meta(4))
    with pytest.raises(GalleryError, match="camera"):
        gallery.add(x[:2], [{"camera": 1}, {"person_label": 3}])
    with pytest.raises(GalleryError, match="k must be"):
        gallery.search(x[:1], 0)
    assert len(gallery) == 2 and gallery.ids().tolist() == [0, 1]


# ----------------------------------------------------------------- persistence
def test_save_and_load_keep_results_and_check_the_model(make: Factory, tmp_path: Path) -> None:
    x, q = clustered(150, DIM, seed=7, n_queries=5)
    gallery = make("flat", fingerprint="sha256:model-a")
    gallery.add(x, _meta(150))
    gallery.remove([3, 4])
    scores, found = gallery.search(q, 6, cameras=[1, 2])
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g", fingerprint="sha256:model-a", dim=DIM)
    assert len(loaded) == 148 and loaded.kind == "flat" and loaded.fingerprint == "sha256:model-a"
    s2, f2 = loaded.search(q, 6, cameras=[1, 2])
    np.testing.assert_array_equal(f2, found)
    np.testing.assert_allclose(s2, scores, atol=1e-6)
    assert loaded.get([0, 149]) == gallery.get([0, 149])
    assert loaded.add(x[:1], _meta(1)).tolist() == [150]  # next id survives the round trip
    with pytest.raises(GalleryError, match="fingerprint"):
        Gallery.load(tmp_path / "g", fingerprint="sha256:model-b")
    with pytest.raises(GalleryError, match="re-index"):
        Gallery.load(tmp_path / "g", dim=DIM + 1)
    with pytest.raises(GalleryError, match="not a gallery directory"):
        Gallery.load(tmp_path / "nothing-here")


def test_saves_follow_one_protocol_on_both_backends(make: Factory, tmp_path: Path) -> None:
    """Own directory: locked, sequenced, a writer that has not seen the last save is refused; elsewhere: a copy."""
    x, _ = clustered(20, DIM, seed=11, n_queries=1)
    gallery = make("flat")
    gallery.add(x[:10], _meta(10))
    gallery.save(tmp_path / "g")
    assert gallery.owns_directory and gallery.sequence == 1 and read_manifest(tmp_path / "g")["sequence"] == 1
    gallery.save(tmp_path / "g")
    assert gallery.sequence == 2 and read_manifest(tmp_path / "g")["count"] == 10
    gallery.save(tmp_path / "copy")
    copied = read_manifest(tmp_path / "copy")
    assert copied["origin"] == {"uid": gallery.uid, "sequence": 2, "directory": str(tmp_path / "g")}
    assert gallery.directory == tmp_path / "g", "a copy leaves the gallery where it was"
    with pytest.raises(StaleGalleryError, match="already holds"):
        make("flat").save(tmp_path / "g")  # a new gallery never overwrites one it has not read
    reader = Gallery.load(tmp_path / "g")
    assert reader.sequence == 2 and reader.uid == gallery.uid
    reader.add(x[10:12], _meta(2))
    reader.save(tmp_path / "g")
    assert read_manifest(tmp_path / "g")["sequence"] == 3
    with pytest.raises(StaleGalleryError, match="another writer"):
        gallery.save(tmp_path / "g")
    reader.close()
    gallery.close()


def test_a_store_that_commits_itself_has_nothing_to_undo_or_replay(make: Factory, backend: str) -> None:
    """FAISS keeps changes in memory until a save (undone if it fails); Milvus commits each one at once."""
    x, _ = clustered(6, DIM, seed=12, n_queries=1)
    gallery = make("flat")
    with pytest.raises(RuntimeError, match="the save failed"), gallery.transaction():
        gallery.add(x[:2], _meta(2))
        raise RuntimeError("the save failed")
    if backend == "faiss":
        assert len(gallery) == 0 and gallery.unsaved_changes == 0
        first = gallery.add(x[2:4], _meta(2), idempotency_key="k", request_digest="d")
        assert gallery.add(x[2:4], _meta(2), idempotency_key="k", request_digest="d").tolist() == first.tolist()
        assert gallery.unsaved_changes == 1 and gallery.find_request("k") == ("d", first.tolist())
    else:
        assert len(gallery) == 2 and gallery.unsaved_changes == 0, "committed by Milvus, not undone"
        with pytest.raises(GalleryError, match="do not record idempotency keys"):
            gallery.add(x[2:4], _meta(2), idempotency_key="k")
        assert len(gallery) == 2 and gallery.find_request("k") is None


# ----------------------------------------------------------------- approximate kinds
@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw"])
def test_approximate_kinds_reach_a_recall_floor(make: Factory, kind: str, tmp_path: Path) -> None:
    x, q = clustered(600, DIM, per_cluster=10, spread=0.5, seed=8, n_queries=30)
    gallery = make(kind)
    gallery.add(x, _meta(600))
    gallery.save(tmp_path / "g")  # Milvus builds its index when the segment is sealed (flushed)
    _, found = gallery.search(q, 10)
    _, truth = brute_force(x, q, 10)
    assert recall_at(found, truth) >= 0.9, kind
    # a filter is applied inside the search: every hit matches it
    _, found = gallery.search(q, 10, cameras=[3])
    hits = found[found >= 0]
    assert hits.size and np.all(hits % 4 == 2)


# ----------------------------------------------------------------- milvus-specific errors
def test_milvus_arguments_are_checked(milvus_db: Path, tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="valid kinds: flat, ivf_flat, ivf_pq, hnsw"):
        Gallery.create(DIM, "flat_fp16", backend="milvus", uri=milvus_db)
    with pytest.raises(GalleryError, match="needs uri="):
        Gallery.create(DIM, backend="milvus")
    with pytest.raises(GalleryError, match="valid options"):
        Gallery.create(DIM, backend="milvus", uri=milvus_db, filter_mode="wider")
    with pytest.raises(GalleryError, match="valid backends: faiss, milvus"):
        Gallery.create(DIM, backend="qdrant")
    with pytest.raises(GalleryError, match="uri= is for backend='milvus'"):
        Gallery.create(DIM, uri=milvus_db)
    first = Gallery.create(DIM, backend="milvus", uri=milvus_db, collection="taken")
    with pytest.raises(GalleryError, match="already has a collection 'taken'"):
        Gallery.create(DIM, backend="milvus", uri=milvus_db, collection="taken")
    first.save(tmp_path / "g")
    with pytest.raises(GalleryError, match="is a milvus gallery, not a faiss one"):
        Gallery.load(tmp_path / "g", backend="faiss")
    faiss_dir = Gallery.create(DIM).save(tmp_path / "f")
    with pytest.raises(GalleryError, match="holds a faiss gallery"):
        first.save(faiss_dir)


def test_milvus_without_pymilvus_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = builtins.__import__

    def no_pymilvus(name: str, *args, **kwargs):
        if name == "pymilvus" or name.startswith("pymilvus."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pymilvus)
    with pytest.raises(GalleryError, match=r"pip install 'xmreid\[milvus\]'"):
        Gallery.create(DIM, backend="milvus", uri=tmp_path / "x.db")
