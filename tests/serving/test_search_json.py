"""``POST /search``'s hand-rendered JSON equals what its pydantic response model would give."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.api.search import hit_body, json_bytes
from serving.schemas import SearchHit


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
