"""Bad input raises a clear GalleryError (a ValueError) and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest

from index import Gallery, GalleryError, UnknownIdsError


@pytest.fixture
def gallery() -> Gallery:
    g = Gallery.create(4, fingerprint="fp")
    g.add(np.eye(4), [{"camera": c} for c in (1, 1, 2, 2)])
    return g


def _unchanged(g: Gallery) -> None:
    assert len(g) == 4 and g.stats()["next_id"] == 4
    assert g.add(np.ones((1, 4)), [{"camera": 1}]).tolist() == [4], "no id was consumed by the failed call"


@pytest.mark.parametrize("vectors, metadata, message", [
    (np.ones((2, 3)), [{"camera": 1}] * 2, r"shape \[N, 4\], got \[2, 3\]"),
    (np.ones(4), [{"camera": 1}], r"shape \[N, 4\], got \[4\]"),
    (np.array([[1, 2, np.nan, 0], [1, 1, 1, 1]]), [{"camera": 1}] * 2, r"NaN or infinite values in row\(s\) \[0\]"),
    (np.array([[1, 1, 1, 1], [np.inf, 0, 0, 0]]), [{"camera": 1}] * 2, r"row\(s\) \[1\]"),
    (np.array([[0.0, 0, 0, 0]]), [{"camera": 1}], "all-zero"),
    (np.array([["a", "b", "c", "d"]]), [{"camera": 1}], "real-valued"),
    (np.ones((2, 4)), [{"camera": 1}], "1 entries but 2 vectors"),
    (np.ones((1, 4)), {"camera": 1}, "must be a list of 1 dicts"),
    (np.ones((2, 4)), [{"camera": 1}, {"person_label": 3}], r"metadata\[1\] is missing the required key 'camera'"),
    (np.ones((1, 4)), [{"camera": "3"}], r"'camera'\] must be an int"),
    (np.ones((1, 4)), [{"camera": True}], r"'camera'\] must be an int"),
    (np.ones((1, 4)), [{"camera": 1, "cam": 2}], r"unknown key\(s\) \['cam'\]; valid keys: camera, person_label"),
    (np.ones((1, 4)), [{"camera": 1, "id": 9}], "ids are assigned by the gallery"),
    (np.ones((1, 4)), [{"camera": 1, "person_label": 1.5}], "int, a str or None"),
    (np.ones((1, 4)), [{"camera": 1, "source": 5}], "'source'"),
    (np.ones((1, 4)), [{"camera": 1, "timestamp": "yesterday"}], "not an ISO-8601"),
    (np.ones((1, 4)), [{"camera": 1, "timestamp": float("nan")}], "finite"),
    (np.ones((1, 4)), [{"camera": 1, "extra": {"x": object()}}], "not JSON-able"),
    (np.ones((1, 4)), [{"camera": 1, "extra": [1, 2]}], "JSON-able dict"),
    (np.ones((1, 4)), ["cam1"], r"metadata\[0\] must be a dict"),
])
def test_bad_add_raises_and_changes_nothing(gallery: Gallery, vectors, metadata, message: str) -> None:
    with pytest.raises(GalleryError, match=message):
        gallery.add(vectors, metadata)
    _unchanged(gallery)


def test_errors_are_value_errors_and_inputs_are_not_modified(gallery: Gallery) -> None:
    assert issubclass(GalleryError, ValueError) and issubclass(UnknownIdsError, GalleryError)
    x = np.full((1, 4), 3.0)
    gallery.add(x, [{"camera": 1}])
    gallery.search(x, 2)
    assert np.all(x == 3.0), "normalising must not write into the caller's array"


@pytest.mark.parametrize("call, message", [
    (lambda g: g.search(np.ones((1, 5)), 3), r"queries must have shape \[N, 4\]"),
    (lambda g: g.search(np.full((1, 4), np.nan), 3), "NaN"),
    (lambda g: g.search(np.ones(4), 0), "k must be a positive int"),
    (lambda g: g.search(np.ones(4), 2.0), "k must be a positive int"),
    (lambda g: g.search(np.ones(4), 2, cameras="1"), "cameras must be"),
    (lambda g: g.search(np.ones(4), 2, cameras=[1, 2.5]), "cameras must be"),
    (lambda g: g.search(np.ones(4), 2, time_range=5), r"\(start, end\) pair"),
    (lambda g: g.search(np.ones(4), 2, time_range=(10, 5)), "after its end"),
    (lambda g: g.remove([1, 99, 100]), r"2 id\(s\) not in the gallery: 99, 100"),
    (lambda g: g.remove([1], missing="skip"), "'error' or 'ignore'"),
    (lambda g: g.get([0, -1]), r"not in the gallery: -1"),
    (lambda g: g.get([1.5]), "must be integers"),
])
def test_bad_queries_and_ids(gallery: Gallery, call, message: str) -> None:
    with pytest.raises(GalleryError, match=message):
        call(gallery)
    _unchanged(gallery)


def test_remove_and_get_semantics(gallery: Gallery) -> None:
    with pytest.raises(UnknownIdsError) as info:
        gallery.remove([0, 42])
    assert info.value.ids == [42] and len(gallery) == 4, "nothing removed when any id is unknown"
    assert gallery.remove([0, 42], missing="ignore") == 1
    assert gallery.remove(1) == 1 and len(gallery) == 2
    assert 2 in gallery and 0 not in gallery and "2" not in gallery
    got = gallery.get([3, 3, -1], missing="none")
    assert got[0] == got[1] and got[0]["id"] == 3 and got[2] is None
    got[0]["extra"]["mutated"] = True
    assert gallery.get([3])[0]["extra"] == {}, "get returns copies"


@pytest.mark.parametrize("make, message", [
    (lambda: Gallery.create(0), "dim must be a positive int"),
    (lambda: Gallery.create(8, "ivf"), "unknown index kind 'ivf'; valid kinds: flat, flat_fp16, ivf_flat"),
    (lambda: Gallery.create(8, "flat", nprobe=4), r"unknown option\(s\) \['nprobe'\] for kind 'flat'; valid options: device"),
    (lambda: Gallery.create(8, "hnsw", m=4), r"valid options: device, ef_construction, ef_search, filter_mode"),
    (lambda: Gallery.create(8, "ivf_flat", nprobe=0), "'nprobe' must be a positive int"),
    (lambda: Gallery.create(8, "ivf_pq", nbits=20), "between 1 and 16"),
    (lambda: Gallery.create(8, filter_mode="fast"), "filter_mode must be one of auto, selector, wider"),
    (lambda: Gallery.create(8, device="tpu"), "device must be 'auto', 'cpu' or 'gpu'"),
    (lambda: Gallery.create(8, fingerprint=123), "fingerprint must be a str"),
])
def test_bad_create(make, message: str) -> None:
    with pytest.raises(GalleryError, match=message):
        make()


def test_empty_add_is_a_no_op(gallery: Gallery) -> None:
    assert gallery.add(np.zeros((0, 4)), []).tolist() == []
    _unchanged(gallery)
