"""Recall targets (index.tuning): the chosen nprobe / ef_search reaches the target on held-out queries and persists."""

from __future__ import annotations

import numpy as np
import pytest
from index_helpers import brute_force, clustered, recall_at

from index import Gallery, GalleryError
from index.persist import read_manifest
from index.tuning import candidates, held_out_recall


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(3000, 32, seed=3, n_queries=100)


@pytest.mark.parametrize("kind, options", [("ivf_flat", {"train_size": 2000}), ("hnsw", {"ef_search": 16})])
def test_tuned_parameter_meets_the_target_and_is_saved(kind: str, options: dict, data, tmp_path) -> None:
    x, q = data
    gallery = Gallery.create(32, kind, **options)
    gallery.add(x, [{"camera": 1}] * len(x))
    record = gallery.tune(0.95, sample=300)
    assert record["met"] and record["recall"] >= 0.95 and record["sample"] == 300 and record["k"] == 10
    param = "nprobe" if kind == "ivf_flat" else "ef_search"
    assert record["param"] == param and gallery.stats()["options"][param] == record["value"]
    assert list(record["tried"])[-1] == str(record["value"]), "the cheapest value that met the target"
    _, found = gallery.search(q, 10)  # queries the tuning never saw
    assert recall_at(found, brute_force(x, q, 10)[1]) >= 0.9
    assert gallery.stats()["tuning"]["value"] == record["value"]
    gallery.save(tmp_path / "g")
    assert read_manifest(tmp_path / "g")["backend_state"]["tuning"]["target_recall"] == 0.95
    again = Gallery.load(tmp_path / "g")
    assert again.stats()["tuning"] == gallery.stats()["tuning"]
    assert again.stats()["options"][param] == record["value"]


def test_tuning_is_refused_where_it_means_nothing(data) -> None:
    x, _ = data
    flat = Gallery.create(32)
    flat.add(x[:50], [{"camera": 1}] * 50)
    with pytest.raises(GalleryError, match="exact"):
        flat.tune(0.9)
    untrained = Gallery.create(32, "ivf_flat", train_size=1000)
    untrained.add(x[:50], [{"camera": 1}] * 50)
    with pytest.raises(GalleryError, match="not trained yet"):
        untrained.tune(0.9)
    pq = Gallery.create(32, "ivf_pq", train_size=1000, m=4, nbits=4)
    pq.add(x[:1000], [{"camera": 1}] * 1000)
    with pytest.raises(GalleryError, match="'ivf_pq' cannot be tuned"):
        pq.tune(0.9)
    hnsw = Gallery.create(32, "hnsw")
    hnsw.add(x[:50], [{"camera": 1}] * 50)
    for bad in (0, 1.5, "0.9", True):
        with pytest.raises(GalleryError, match=r"target_recall must be a number in \(0, 1\]"):
            hnsw.tune(bad)


def test_held_out_recall_ignores_the_query_itself() -> None:
    truth = np.array([[7, 1, 2], [8, 3, 4]])
    assert held_out_recall(np.array([[7, 1, 9], [3, 8, 4]]), truth, np.array([7, 8]), 2) == pytest.approx(0.75)
    assert candidates("ivf_flat", 100, 10) == ("nprobe", [1, 2, 4, 8, 16, 32, 64, 100])
    assert candidates("hnsw", None, 10)[1][:3] == [11, 32, 64]
