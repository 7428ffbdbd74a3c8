"""``Gallery.track_spans``: the gallery's tracks with first/last time and counts, earliest first."""

from __future__ import annotations

import numpy as np

from index import Gallery

DIM = 8


def _gallery() -> Gallery:
    g = Gallery.create(DIM, fingerprint="fp")
    rows = [  # camera, track_id, timestamp
        (1, "cam1-a-1", 100.0), (1, "cam1-a-1", 160.0), (1, "cam1-a-1", 130.0),
        (2, "cam2-b-1", 50.0), (2, "cam2-b-1", 70.0),
        (1, "cam1-a-2", None),  # a track without times: listed last
        (4, 7, 120.0),  # int track ids are kept as ints
        (1, None, 10.0),  # not a track
    ]
    vectors = np.random.default_rng(0).standard_normal((len(rows), DIM)).astype(np.float32)
    g.add(vectors, [{"camera": c, "track_id": t, "timestamp": s} for c, t, s in rows])
    return g


def test_tracks_are_grouped_per_camera_and_track_earliest_first() -> None:
    spans = _gallery().track_spans()
    assert [(s["camera"], s["track_id"]) for s in spans] == [(2, "cam2-b-1"), (1, "cam1-a-1"), (4, 7), (1, "cam1-a-2")]
    assert spans[0] == {"camera": 2, "track_id": "cam2-b-1", "first_seen": 50.0, "last_seen": 70.0, "items": 2,
                        "first_id": 3}
    assert spans[1]["first_seen"] == 100.0 and spans[1]["last_seen"] == 160.0 and spans[1]["items"] == 3
    assert spans[1]["first_id"] == 0
    assert spans[3]["first_seen"] is None and spans[3]["items"] == 1


def test_camera_filter_and_a_gallery_without_tracks() -> None:
    g = _gallery()
    assert [s["track_id"] for s in g.track_spans([1])] == ["cam1-a-1", "cam1-a-2"]
    assert g.track_spans([9]) == [] and g.track_spans([]) == []
    plain = Gallery.create(DIM, fingerprint="fp")
    plain.add(np.ones((1, DIM), np.float32), [{"camera": 1}])
    assert plain.track_spans() == []
