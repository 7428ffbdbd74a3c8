"""``POST /search``'s hand-rendered JSON equals what its pydantic response model would give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.api.search import hit_body, json_bytes
from serving.api.schemas import SearchHit


@pytest.mark.parametrize("hit", [
    {"rank": 1, "gallery_id": 7, "score": 0.5, "camera": 1, "person_label": 12, "source": "cam1/0012/0001.jpg"},
    {"rank": 2, "gallery_id": 8, "score": -0.25, "camera": 5, "person_label": None, "source": None},
    {"rank": 3, "gallery_id": 9, "score": 1.0, "camera": None, "person_label": "p-9", "source": "x", "extra": 1},
    # Types the gallery does not return take the pydantic route, and come out as the model makes them.
    {"rank": np.int64(4), "gallery_id": np.int64(10), "score": np.float32(0.75), "camera": True,
     "person_label": 3, "source": "y"},
])
def test_hit_body_equals_the_pydantic_model(hit: dict) -> None:
    assert hit_body(hit) == SearchHit(**hit).model_dump(mode="json")
    assert list(hit_body(hit)) == list(SearchHit.model_fields)  # same keys, same order


def test_json_bytes_are_compact_utf8_json() -> None:
    body = json_bytes({"results": [], "detail": "é"})
    assert json.loads(body) == {"results": [], "detail": "é"} and b" " not in body
    with pytest.raises(ValueError):
        json_bytes({"score": float("nan")})  # like JSONResponse: never invalid JSON


def _gallery_hits() -> list[dict]:
    from serving.runtime.durable import hit_dict

    items = [{"camera": 1, "person_label": 12, "source": "cam1/0012/0001.jpg", "track_id": None, "extra": {}},
             {"camera": 4, "person_label": "p-9", "source": None, "track_id": 3, "timestamp": 1.5}]
    return [hit_dict(rank, 100 + rank, score, item) for rank, (score, item) in
            enumerate(zip([0.8125, -1e-05], items), start=1)]


def test_answer_bytes_writes_gallery_hits_as_the_pydantic_model_would() -> None:
    from serving.api.search import answer_bytes

    hits = _gallery_hits()
    timings = {"decode": 0.1, "embed": 1.25, "search": 0.05, "total": 1.4}
    model = {"name": "onnxruntime", "fingerprint": "ab" * 32, "dim": 1536, "height": 96, "width": 32}
    body = json.loads(answer_bytes(hits, timings, model))
    assert body == {"results": [SearchHit(**h).model_dump(mode="json") for h in hits], "timings_ms": timings,
                    "model": model}
    assert [list(h) for h in body["results"]] == [list(SearchHit.model_fields)] * 2  # every field, in order


def test_answer_bytes_takes_the_checked_route_for_values_orjson_does_not_write() -> None:
    from serving.api.search import answer_bytes

    hits = _gallery_hits()
    hits[0]["gallery_id"], hits[0]["score"] = np.int64(101), np.float32(0.8125)  # e.g. from another store
    body = json.loads(answer_bytes(hits, {"total": 1.0}, {}))
    assert body["results"][0]["gallery_id"] == 101 and body["results"][0]["score"] == 0.8125
    assert body["results"] == [SearchHit(**h).model_dump(mode="json") for h in hits]
