"""``POST /search``'s one encoder writes what its pydantic response model would give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.api.schemas import SearchHit, SearchResponse
from serving.api.search import encode_answer
from serving.runtime.hits import hit_dict

TIMINGS = {"decode": 0.1, "embed": 1.25, "search": 0.05, "total": 1.4}
MODEL = {"name": "onnxruntime", "fingerprint": "ab" * 32, "dim": 1536, "height": 96, "width": 32}


@pytest.mark.parametrize("hit", [
    {"rank": 1, "gallery_id": 7, "score": 0.5, "camera": 1, "person_label": 12, "source": "cam1/0012/0001.jpg"},
    {"rank": 2, "gallery_id": 8, "score": -0.25, "camera": 5, "person_label": None, "source": None},
    {"rank": 3, "gallery_id": 9, "score": 1.0, "camera": None, "person_label": "p-9", "source": "x", "extra": 1},
    # Types the gallery does not return take the pydantic route, and come out as the model makes them.
    {"rank": np.int64(4), "gallery_id": np.int64(10), "score": np.float32(0.75), "camera": True,
     "person_label": 3, "source": "y"},
])
def test_hits_are_written_as_the_pydantic_model_would(hit: dict) -> None:
    """A hit as the runtime makes it (:func:`hit_dict` of the item) comes out as ``SearchHit`` makes it."""
    body = {"results": [hit_dict(hit["rank"], hit["gallery_id"], hit["score"], hit)], "timings_ms": TIMINGS,
            "model": MODEL}
    (written,) = json.loads(encode_answer(body, SearchResponse))["results"]
    assert written == SearchHit(**hit).model_dump(mode="json")
    assert list(written) == list(SearchHit.model_fields)  # same keys, same order


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


def test_the_encoder_writes_compact_utf8_json() -> None:
    body = encode_answer({"results": [], "detail": "é"}, SearchResponse)
    assert json.loads(body) == {"results": [], "detail": "é"} and b" " not in body
    # Never invalid JSON: a NaN (which the gallery's finite-score check keeps out) is not written as one.
    assert json.loads(encode_answer({"score": float("nan")}, SearchResponse), parse_constant=_refuse) == \
        {"score": None}


def _gallery_hits() -> list[dict]:
    items = [{"camera": 1, "person_label": 12, "source": "cam1/0012/0001.jpg", "track_id": None, "extra": {}},
             {"camera": 4, "person_label": "p-9", "source": None, "track_id": 3, "timestamp": 1.5}]
    return [hit_dict(rank, 100 + rank, score, item) for rank, (score, item) in
            enumerate(zip([0.8125, -1e-05], items), start=1)]


def test_gallery_hits_are_written_as_the_pydantic_model_would() -> None:
    hits = _gallery_hits()
    body = json.loads(encode_answer({"results": hits, "timings_ms": TIMINGS, "model": MODEL}, SearchResponse))
    assert body == {"results": [SearchHit(**h).model_dump(mode="json") for h in hits], "timings_ms": TIMINGS,
                    "model": MODEL}
    assert [list(h) for h in body["results"]] == [list(SearchHit.model_fields)] * 2  # every field, in order


def test_values_orjson_does_not_write_take_the_checked_route() -> None:
    hits = _gallery_hits()
    hits[0]["gallery_id"], hits[0]["score"] = np.int64(101), np.float32(0.8125)  # e.g. from another store
    body = json.loads(encode_answer({"results": hits, "timings_ms": TIMINGS, "model": MODEL}, SearchResponse))
    assert body["results"][0]["gallery_id"] == 101 and body["results"][0]["score"] == 0.8125
    assert body["results"] == [SearchHit(**h).model_dump(mode="json") for h in hits]
    assert set(body) == {"results", "timings_ms", "model"} and body["timings_ms"] == TIMINGS  # nothing added
