"""Grouped search (``index.grouping``) against brute force, the ``track_id`` column and its schema migration,
and ``Gallery.vectors`` (what re-ranking reads)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index import Gallery, GalleryError
from index.grouping import first_fetch, search_groups
from index.integrity import sha256_file
from index.persist import data_paths, read_manifest
from tests.index.index_helpers import clustered, normalise


def _labelled_gallery(n: int = 600, dim: int = 24, seed: int = 0) -> tuple[Gallery, np.ndarray, list[dict]]:
    """Clustered descriptors; uneven groups (one person with a third of the gallery forces the search wider)."""
    rng = np.random.default_rng(seed)
    x, _ = clustered(n, dim, per_cluster=12, seed=seed)
    labels = rng.integers(0, 40, n)
    labels[rng.random(n) < 0.33] = 7  # a huge group: 2 * k * items / groups underestimates what k groups need
    meta = []
    for i in range(n):
        item = {"camera": int(rng.integers(1, 5)), "track_id": int(rng.integers(0, 30)) if i % 5 else None}
        if i % 11:
            item["person_label"] = int(labels[i]) if i % 3 else f"p{labels[i]}"  # int and str labels differ
        meta.append(item)
    gallery = Gallery.create(dim)
    gallery.add(x, meta)
    return gallery, x, meta


def _key(item: dict, i: int, group_by: str):
    if group_by == "person":
        label = item.get("person_label")
        return ("item", i) if label is None else label
    track = item.get("track_id")
    return ("item", i) if track is None else (item["camera"], track)


def _brute_groups(x: np.ndarray, meta: list[dict], q: np.ndarray, k: int, group_by: str, cameras=None):
    """Every group's best score and size over the whole (filtered) gallery, float64, best first."""
    scores = normalise(q[None]) @ normalise(x).T
    best: dict = {}
    size: dict = {}
    for i, item in enumerate(meta):
        if cameras is not None and item["camera"] not in cameras:
            continue
        key = _key(item, i, group_by)
        size[key] = size.get(key, 0) + 1
        if key not in best or scores[0, i] > best[key][0]:
            best[key] = (scores[0, i], i)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    return [(key, s, i, size[key]) for key, (s, i) in ranked]


@pytest.mark.parametrize("group_by", ["person", "camera_track"])
@pytest.mark.parametrize("cameras", [None, [1, 3]])
def test_grouped_search_equals_brute_force(group_by: str, cameras) -> None:
    gallery, x, meta = _labelled_gallery()
    _, queries = clustered(600, 24, per_cluster=12, seed=0, n_queries=12)
    k = 10
    answers = search_groups(gallery, queries, k, group_by, cameras)
    for q, groups in zip(queries, answers):
        truth = _brute_groups(x, meta, q, k, group_by, cameras)
        assert len(groups) == len(truth) == k
        keys = [g.key for g in groups]
        assert len(set(keys)) == len(keys)  # never two groups for one person / track
        assert keys == [t[0] for t in truth]
        np.testing.assert_allclose([g.score for g in groups], [t[1] for t in truth], atol=1e-5)
        for g, (_, score, best_id, size) in zip(groups, truth):
            assert g.members[0][0] == best_id and g.members[0][1] == pytest.approx(score, abs=1e-5)
            assert g.count == size  # every crop the group holds under the filter, not just those found
            assert [m[1] for m in g.members] == sorted((m[1] for m in g.members), reverse=True)
            assert all(cameras is None or m[2]["camera"] in cameras for m in g.members)


def test_grouping_fills_k_groups_even_when_one_group_dominates() -> None:
    # 300 crops of person 1 closest to the query, then 9 other people: the first search (2 * k * 310 / 10 = 620
    # capped at 310) must still find all 10 groups; a k past the number of groups returns every group once.
    dim = 8
    near = np.tile(np.eye(dim, dtype=np.float32)[0], (300, 1)) + 0.01 * np.arange(300)[:, None]
    far = np.eye(dim, dtype=np.float32)[1:2].repeat(10, 0) + np.linspace(0, 1, 10)[:, None]
    gallery = Gallery.create(dim)
    gallery.add(np.vstack([near, far]), [{"camera": 1, "person_label": 1}] * 300
                + [{"camera": 1, "person_label": 2 + i % 9} for i in range(10)])
    groups = search_groups(gallery, np.eye(dim, dtype=np.float32)[:1], 50, "person")[0]
    assert sorted(g.key for g in groups) == list(range(1, 11))
    assert groups[0].key == 1 and groups[0].count == 300 and len(groups[0].members) == 20


def test_first_fetch_is_twice_what_k_average_groups_hold() -> None:
    assert first_fetch(10, groups=100, items=1000) == 200
    assert first_fetch(10, groups=1000, items=1000) == 20
    assert first_fetch(10, groups=5, items=30) == 30  # never past the gallery
    assert first_fetch(10, groups=0, items=0) == 10


def test_track_id_round_trips_with_its_type_and_is_validated(tmp_path: Path) -> None:
    gallery = Gallery.create(4)
    ids = gallery.add(np.eye(4, dtype=np.float32)[:3], [{"camera": 1, "track_id": 5}, {"camera": 1, "track_id": "5"},
                                                        {"camera": 2}])
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g")
    assert [m["track_id"] for m in loaded.get(ids)] == [5, "5", None]
    assert loaded.group_counts("camera_track", [(1, 5), (1, "5"), (2, None)]) == {(1, 5): 1, (1, "5"): 1}
    with pytest.raises(GalleryError, match=r"track_id'\] must be an int, a str or None"):
        gallery.add(np.eye(4, dtype=np.float32)[:1], [{"camera": 1, "track_id": 1.5}])
    with pytest.raises(GalleryError, match="valid values: person, camera_track"):
        gallery.group_totals("colour")


def _to_legacy_schema(directory: Path) -> None:
    """Rewrite a saved gallery's metadata as galleries saved before track_id existed (and fix the manifest)."""
    manifest = read_manifest(directory)
    _, db_path = data_paths(directory, manifest)
    db = sqlite3.connect(db_path)
    with db:
        db.executescript("""
            CREATE TABLE old (id INTEGER PRIMARY KEY, camera INTEGER NOT NULL, person_label, source TEXT,
                              timestamp REAL, extra TEXT NOT NULL DEFAULT '{}');
            INSERT INTO old SELECT id, camera, person_label, source, timestamp, extra FROM items;
            DROP TABLE items;
            ALTER TABLE old RENAME TO items;
            CREATE INDEX items_camera ON items(camera);
        """)
    db.execute("VACUUM")
    db.close()
    manifest["checksums"][db_path.name] = sha256_file(db_path)
    manifest["sizes"][db_path.name] = db_path.stat().st_size
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_a_gallery_saved_before_track_id_loads_searches_and_saves_the_new_schema(tmp_path: Path) -> None:
    gallery = Gallery.create(4)
    ids = gallery.add(np.eye(4, dtype=np.float32), [{"camera": c, "person_label": c} for c in (1, 1, 2, 3)])
    gallery.save(tmp_path / "g")
    gallery.close()
    _to_legacy_schema(tmp_path / "g")
    old = sqlite3.connect(data_paths(tmp_path / "g", read_manifest(tmp_path / "g"))[1])
    assert "track_id" not in [r[1] for r in old.execute("PRAGMA table_info(items)")]
    old.close()

    loaded = Gallery.load(tmp_path / "g")
    assert [m["track_id"] for m in loaded.get(ids)] == [None] * 4
    keys = [g.key for g in search_groups(loaded, np.eye(4, dtype=np.float32)[:1], 3, "person")[0]]
    assert keys[0] == 1 and sorted(keys) == [1, 2, 3]  # persons 2 and 3 tie at score 0
    new = loaded.add(np.ones((1, 4), dtype=np.float32), [{"camera": 1, "track_id": 9}])
    loaded.save(tmp_path / "g")
    again = Gallery.load(tmp_path / "g")
    assert again.get(new)[0]["track_id"] == 9 and len(again) == 5


def test_vectors_gives_back_the_stored_normalised_descriptors() -> None:
    x = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    gallery = Gallery.create(8)
    ids = gallery.add(x, [{"camera": 1}] * 20)
    np.testing.assert_allclose(gallery.vectors(ids[[3, 0, 7]]), normalise(x[[3, 0, 7]]), atol=1e-6)
    with pytest.raises(GalleryError, match="99"):
        gallery.vectors([99])


def test_repair_rebuilds_a_legacy_metadata_file_under_the_new_schema(tmp_path: Path) -> None:
    from index.metadata_rebuild import rebuild_database

    gallery = Gallery.create(4)
    gallery.add(np.eye(4, dtype=np.float32)[:2], [{"camera": 1, "person_label": 3}, {"camera": 2}])
    gallery.save(tmp_path / "g")
    gallery.close()
    _to_legacy_schema(tmp_path / "g")
    source = data_paths(tmp_path / "g", read_manifest(tmp_path / "g"))[1]
    assert rebuild_database(source, tmp_path / "new.sqlite") == 2
    db = sqlite3.connect(tmp_path / "new.sqlite")
    assert db.execute("SELECT id, camera, person_label, track_id FROM items ORDER BY id").fetchall() == [
        (0, 1, 3, None), (1, 2, None, None)]
    db.close()
