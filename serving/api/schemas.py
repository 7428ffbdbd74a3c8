"""Request and response bodies of the HTTP API (what ``/docs`` shows).

Every field carries a description, because the OpenAPI page is the API's reference for the people who
integrate with it; every error is the same :class:`ErrorBody` shape so a client needs one error path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serving.runtime.hits import Camera, SearchHit


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer."""

    error: str = Field(description="machine-readable code, e.g. `not_an_image`, `unknown_camera`, "
                                   "`internal_error`", examples=["not_an_image"])
    detail: str = Field(description="one sentence for a human, naming the valid values where there are some")
    request_id: str | None = Field(None, description="the request's id (also in the X-Request-ID header); "
                                                     "present on 500s so the failure can be found in the log")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "the upload is not a usable image: empty, not an image, truncated or corrupt",
    401: "this endpoint needs an API key and the X-API-Key header is missing",
    403: "the X-API-Key header matches no key, or the key's role does not allow this endpoint (or, with no key "
         "configured, gallery changes are refused)",
    404: "no gallery item has this id",
    408: "the request head or body did not arrive in time",
    409: "search: the gallery is empty; gallery changes: the gallery is read-only here, written by another "
         "process, or changed on disk since this server loaded it (nothing was changed)",
    413: "the request or one of its files is larger than the server accepts",
    415: "the file's content type or format is not JPEG, PNG or BMP",
    422: "a parameter is invalid (top_k out of range, unknown camera, bad metadata, too many pixels, "
         "too many files, missing field)",
    500: "an internal failure; the body carries the request id that is in the server log",
    503: "the model or gallery is not loaded yet (or is damaged), or the model queue is full; retry later",
    507: "the gallery could not be saved: its disk is full (nothing was changed)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the given status codes, all with :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in (*codes, 500)}


class SearchGroup(BaseModel):
    """One group of a grouped search (`group_by=person|camera_track`): a person, or one camera track."""

    rank: int = Field(description="1-based rank of the group (by its best member)", ge=1)
    key: str = Field(description="`person:<label>`, `camera_track:<camera>/<track_id>`, or `item:<gallery_id>` "
                                 "for a crop without the grouping key (it is a group of its own)")
    person_label: int | str | None = Field(None, description="the group's person (group_by=person)")
    camera: Camera | None = Field(None, description="the group's camera (group_by=camera_track)")
    track_id: int | str | None = Field(None, description="the group's track (group_by=camera_track)")
    score: float = Field(description="the score of the group's best member (the first of `members`)")
    count: int = Field(description="crops the group holds in the gallery (within the camera filter)", ge=1)
    best: SearchHit = Field(description="the group's best crop (also `results[rank - 1]`)")
    members: list[SearchHit] = Field(description="the group's crops the search found, best first (at most 20; "
                                                 "`count` says how many there are in all)")


class Timings(BaseModel):
    """Milliseconds spent in each stage of this request."""

    decode: float = Field(description="decoding and resizing the upload(s), ms")
    embed: float = Field(description="waiting for and running the model (includes the micro-batch wait), ms")
    search: float = Field(description="searching the gallery and reading metadata, ms")
    total: float = Field(description="the whole request, from receiving the body to building the answer, ms")
    rerank: float | None = Field(None, description="with `rerank=true`: k-reciprocal re-ranking of the top-N "
                                                   "neighbourhood, ms (not part of `search`; total includes it)")
    fuse: float | None = Field(None, description="track queries: fusing the crops' descriptors into one, ms")


class ModelInfo(BaseModel):
    """The model that embedded the query."""

    name: str = Field(description="embedder backend: onnxruntime, tensorrt or torch")
    fingerprint: str = Field(description="sha256 of the model artifact; the gallery was built with the same")
    dim: int = Field(description="descriptor length")
    height: int = Field(description="model input height in pixels (uploads are resized to it)")
    width: int = Field(description="model input width in pixels")


class SearchResponse(BaseModel):
    """Answer to ``POST /search``."""

    results: list[SearchHit] = Field(description="matches, best first; at most top_k (fewer when the "
                                                 "gallery or the camera filter holds fewer items); with "
                                                 "group_by, the best crop of each group, in group order")
    timings_ms: Timings = Field(description="where the time went")
    model: ModelInfo = Field(description="the model used")
    groups: list[SearchGroup] | None = Field(None, description="with group_by=person|camera_track: top_k groups, "
                                                               "best first; absent otherwise")


class TrackInfo(BaseModel):
    """How a track query was turned into one descriptor."""

    crops: int = Field(description="crops in the track (all embedded, in the request's micro-batch)")
    fusion: str = Field(description="`mean` (mean of L2-normalised descriptors, re-normalised) or `max` "
                                    "(element-wise max of them, re-normalised)")


class TrackSearchResponse(SearchResponse):
    """Answer to ``POST /search/track``: one ranking for the whole track."""

    track: TrackInfo = Field(description="the track that was searched with")


class BatchItem(BaseModel):
    """The matches of one image of a ``/search/batch`` request."""

    index: int = Field(description="0-based position of the image in the request")
    filename: str | None = Field(None, description="the file name the client sent, if any")
    results: list[SearchHit] = Field(description="matches, best first (same as POST /search would answer)")
    groups: list[SearchGroup] | None = Field(None, description="with group_by: this image's groups (as POST /search)")


class BatchSearchResponse(BaseModel):
    """Answer to ``POST /search/batch``."""

    items: list[BatchItem] = Field(description="one entry per uploaded image, in upload order")
    timings_ms: Timings = Field(description="where the time went, for the whole request")
    model: ModelInfo = Field(description="the model used")


class GalleryItemMetadata(BaseModel):
    """Metadata of one image added with ``POST /gallery`` (the ``metadata`` form field is a JSON list of these)."""

    model_config = ConfigDict(extra="forbid")

    camera: Camera = Field(description="camera that took the crop (an integer; required)")
    person_label: int | str | None = Field(None, description="identity label, if known")
    source: str | None = Field(None, description="where the crop came from (a reference, never read by the "
                                                 "server as a path)")
    # A datetime, not any str: the store accepts epoch seconds or an ISO 8601 string and nothing else, and the
    # schema's ``format: date-time`` says so (a free-form string passed the schema and then failed in the store).
    timestamp: float | dt.datetime | None = Field(None, description="when the crop was taken (epoch seconds or "
                                                                    "an ISO 8601 date-time)")
    extra: dict[str, Any] | None = Field(None, description="anything else worth keeping, JSON")
    track_id: int | str | None = Field(None, description="the camera track of the crop (crops of one person in one "
                                                         "pass past one camera share it); search with "
                                                         "group_by=camera_track groups by (camera, track_id)")


class GalleryAddResponse(BaseModel):
    """Answer to ``POST /gallery``."""

    ids: list[int] = Field(description="ids given to the new items, in upload order")
    size: int = Field(description="items in the gallery after the addition")


class GalleryDeleteResponse(BaseModel):
    """Answer to ``DELETE /gallery/{id}``."""

    deleted: int = Field(description="the id that was removed")
    size: int = Field(description="items in the gallery after the removal")


class GalleryReloadResponse(BaseModel):
    """Answer to ``POST /gallery/reload``."""

    source: str = Field(description="`staging`: the staging copy was installed; `directory`: the served "
                                    "directory was re-read")
    size: int = Field(description="items in the gallery now served")
    previous_size: int = Field(description="items in the gallery served before")
    sequence: int | None = Field(None, description="the save sequence of the gallery now served")


class GalleryStatsResponse(BaseModel):
    """Answer to ``GET /gallery/stats``."""

    size: int = Field(description="items in the gallery")
    dim: int = Field(description="descriptor length the gallery stores")
    kind: str = Field(description="index kind: flat (exact), flat_fp16, ivf_flat, ivf_pq or hnsw")
    fingerprint: str | None = Field(None, description="fingerprint of the model the gallery was built with")
    model_fingerprint: str = Field(description="fingerprint of the model the server runs (equal to the above)")
    cameras: dict[str, int] = Field(description="items per camera (keys are camera ids)")
    labelled: int = Field(description="items with a person label")
    next_id: int = Field(description="the id the next added item will get (ids are never reused)")
    created: str | None = Field(None, description="when the gallery was created (UTC, ISO 8601)")
    saved: str | None = Field(None, description="when the gallery was last saved (UTC, ISO 8601)")
    index: dict[str, Any] = Field(description="index facts: build options, runtime options, device, whether "
                                              "trained, approximate memory in bytes")


class HealthResponse(BaseModel):
    """Answer to ``GET /healthz``."""

    status: str = Field(description="`ok` while the process can answer HTTP")


class ReadyResponse(BaseModel):
    """Answer to ``GET /readyz`` when ready."""

    status: str = Field(description="`ready` when the model and gallery are loaded and the batcher runs")
    model: ModelInfo = Field(description="the loaded model")
    gallery_size: int = Field(description="items in the gallery")
    unsaved_changes: int = Field(0, description="gallery changes held in memory only (`--no-save`); a saving "
                                                "server never holds any")
    writable: bool = Field(True, description="whether this server takes gallery changes (false: `--read-only`)")
    last_save_error: str | None = Field(None, description="why the last gallery save failed, if it did (the "
                                                          "change was refused and undone)")
