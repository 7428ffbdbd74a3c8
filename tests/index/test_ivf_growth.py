"""IVF lists sized for the gallery: ``nlist`` from the expected size, re-training when an auto-sized gallery grows.

An ``ivf_flat`` gallery trained at its first 50,000 items (nlist=447) and grown to 1M without re-training
needs every list for a 0.95 recall target. These tests pin the sizing rule, that a 4x-grown gallery is
re-trained with the larger ``nlist`` without losing or mislabelling any item, that a recall target is
measured again afterwards, and that explicit ``nlist`` and saved galleries keep what they had.
"""

from __future__ import annotations

import numpy as np
import pytest
from index_helpers import brute_force, clustered, meta, recall_at

from index import Gallery
from index.faiss_backend import auto_nlist


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(6000, 32, seed=11, n_queries=40)


def _nlist(gallery: Gallery) -> int:
    return gallery.stats()["options"]["nlist"]


def test_auto_nlist_rule() -> None:
    assert auto_nlist(1_000_000, 128_000) == 2000          # 2 * sqrt(N)
    assert auto_nlist(1_000_000, 3900) == 100               # capped at n_train / 39
    assert auto_nlist(0, 2000) == 51                        # no hint: sized for the sample (old behaviour)
    assert auto_nlist(1, 1) == 1


def test_train_with_expected_size_sizes_nlist_for_it(data) -> None:
    x, _q = data
    gallery = Gallery.create(32, "ivf_flat")
    gallery.train(x[:4000], expected_size=250_000)
    assert _nlist(gallery) == min(round(2 * 250_000 ** 0.5), 4000 // 39) == 102
    assert gallery.stats()["nlist_sized_for"] == 250_000
    with pytest.raises(ValueError, match="expected_size must be a positive int"):
        Gallery.create(32, "ivf_flat").train(x[:4000], expected_size=0)


def test_grown_gallery_is_retrained_and_keeps_every_item(data, tmp_path) -> None:
    x, q = data
    gallery = Gallery.create(32, "ivf_flat", train_size=300, nprobe=4)
    labels = [{"camera": int(i % 5) + 1, "person_label": str(i)} for i in range(len(x))]
    gallery.add(x[:300], labels[:300])
    assert _nlist(gallery) == 7                       # min(2*sqrt(300), 300 // 39)
    assert gallery.stats()["nlist_sized_for"] == 300
    gallery.add(x[300:1000], labels[300:1000])        # 3.3x: not yet
    assert _nlist(gallery) == 7
    gallery.add(x[1000:1200], labels[1000:1200])      # 4x the 300 it was sized for: re-trained
    assert _nlist(gallery) == min(round(2 * 1200 ** 0.5), 1200 // 39) == 30
    assert gallery.stats()["nlist_sized_for"] == 1200
    gallery.add(x[1200:], labels[1200:])              # 5x of 1200: once more
    assert _nlist(gallery) == min(round(2 * 6000 ** 0.5), 6000 // 39) == 153
    assert len(gallery) == len(x)
    np.testing.assert_array_equal(gallery.ids(), np.arange(len(x)))
    # every vector still sits under its own id: searching each item exhaustively finds itself
    gallery.set_search_params(nprobe=153)
    _, ids = gallery.search(x[::50], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(0, len(x), 50))
    np.testing.assert_array_equal(gallery.search(q, 10)[1], brute_force(x, q, 10)[1])
    assert [m["person_label"] for m in gallery.get(ids[:5, 0])] == [str(i) for i in ids[:5, 0]]  # metadata still matches
    gallery.save(tmp_path / "g")
    loaded = Gallery.load(tmp_path / "g")
    assert _nlist(loaded) == 153 and loaded.stats()["nlist_sized_for"] == 6000


def test_recall_target_is_measured_again_after_regrowth(data) -> None:
    x, q = data
    gallery = Gallery.create(32, "ivf_flat", train_size=300)
    gallery.add(x[:300], meta(np.ones(300, dtype=int)))
    first = gallery.tune(0.95, sample=200)
    gallery.add(x[300:1500], meta(np.ones(1200, dtype=int)))
    tuning = gallery.stats()["tuning"]
    assert _nlist(gallery) == 1500 // 39 and tuning["target_recall"] == 0.95 and tuning["met"]
    assert tuning is not first and tuning["value"] == gallery.stats()["options"]["nprobe"]
    assert recall_at(gallery.search(q, 10)[1], brute_force(x[:1500], q, 10)[1]) >= 0.9


def test_explicit_nlist_and_ivf_pq_never_regrow(data) -> None:
    x, _ = data
    fixed = Gallery.create(32, "ivf_flat", nlist=8, train_size=400)
    fixed.add(x[:400], meta(np.ones(400, dtype=int)))
    fixed.add(x[400:], meta(np.ones(len(x) - 400, dtype=int)))
    assert _nlist(fixed) == 8
    pq = Gallery.create(32, "ivf_pq", m=8, nbits=4, train_size=400)
    pq.add(x[:400], meta(np.ones(400, dtype=int)))
    before = _nlist(pq)
    pq.add(x[400:], meta(np.ones(len(x) - 400, dtype=int)))
    assert _nlist(pq) == before


def test_gallery_saved_before_growth_was_recorded_keeps_its_nlist(data, tmp_path) -> None:
    import json

    x, _ = data
    gallery = Gallery.create(32, "ivf_flat", train_size=300)
    gallery.add(x[:300], meta(np.ones(300, dtype=int)))
    gallery.save(tmp_path / "g")
    manifest_path = tmp_path / "g" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["backend_state"]["growth"] == {"auto_nlist": True, "trained_for": 300}
    del manifest["backend_state"]["growth"]  # as written by the previous release
    manifest_path.write_text(json.dumps(manifest))
    old = Gallery.load(tmp_path / "g")
    old.add(x[300:2000], meta(np.ones(1700, dtype=int)))
    assert _nlist(old) == 7 and len(old) == 2000
