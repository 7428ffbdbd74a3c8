"""One search hit: its fields (:class:`SearchHit`, also the API's schema) and how the gallery's answer fills them.

The runtime writes hits as plain dicts (:func:`hit_dict`) so that ``POST /search`` can encode them without
building a model per hit; the dict's keys are the model's fields, in its order, taken from the model itself.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Camera = int
"""A camera id as stored in the gallery: an integer (SYSU-MM01 numbers them 1, 2, 4, 5).

The metadata store (``index.metadata``), the ``camera`` search filter and the per-camera counts all key
cameras by integer, so the schema says exactly that; a site that names its cameras maps the names to
numbers and may keep the name in ``extra``. (The 64-bit range SQLite stores is checked by the route with
its own message: a ``maximum`` of 2**63 - 1 does not survive JSON number handling intact.)"""


class SearchHit(BaseModel):
    """One ranked gallery match."""

    rank: int = Field(description="1-based rank; 1 is the most similar", ge=1)
    gallery_id: int = Field(description="the gallery item's id (use it with DELETE /gallery/{id})")
    score: float = Field(description="cosine similarity between query and item descriptors, in [-1, 1]; "
                                     "higher is more similar")
    camera: Camera | None = Field(None, description="camera the gallery crop was taken by")
    person_label: int | str | None = Field(None, description="identity label of the gallery crop, if known")
    source: str | None = Field(None, description="where the gallery crop came from (a path relative to the "
                                                 "image root it was indexed from)")
    track_id: int | str | None = Field(None, description="the camera track the crop belongs to, if known (crops of "
                                                         "one person in one pass past one camera share it)")
    rerank_distance: float | None = Field(None, description="with `rerank=true`: the k-reciprocal re-ranked "
                                                            "distance that ordered this hit (smaller is more "
                                                            "similar); `score` stays the cosine similarity")


#: The hit's fields, in the order the API writes them.
HIT_FIELDS: tuple[str, ...] = tuple(SearchHit.model_fields)
#: Fields that come from the search itself (written first, and ``rerank_distance`` last); every other field
#: is the gallery item's metadata of that name. tests/serving/test_search_json.py checks the order.
_FROM_SEARCH = ("rank", "gallery_id", "score", "rerank_distance")
_FROM_ITEM: tuple[str, ...] = tuple(name for name in HIT_FIELDS if name not in _FROM_SEARCH)


def hit_dict(rank: int, gallery_id: int, score: float, item: dict[str, Any]) -> dict[str, Any]:
    """One search hit as the API answers it: rank, id, score and the item's metadata, every field of
    :class:`SearchHit` in its order (``rerank_distance`` None until a re-ranking sets it)."""
    return {"rank": rank, "gallery_id": gallery_id, "score": score, **{name: item.get(name) for name in _FROM_ITEM},
            "rerank_distance": None}
