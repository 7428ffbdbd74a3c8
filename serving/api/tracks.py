"""``GET /gallery/tracks``: the gallery's tracks on a time line — which camera saw which track, first and last.

Video ingestion indexes a few crops per track with the track's ``track_id`` and the frame's time; this route
groups them back into tracks, earliest first, so an operator can see when and where a person was seen. It
reveals as much as a search does (cameras, times, item ids), so it needs the ``search`` permission and each
view is audited.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from serving.api.audit import auditor
from serving.api.deps import ApiKeyDep, RuntimeDep
from serving.api.schemas import error_responses
from serving.api.search import check_cameras
from serving.runtime.expiry import iso

router = APIRouter(prefix="/gallery", tags=["gallery"])

MAX_TRACKS = 10_000


class TrackSpan(BaseModel):
    """One track of the gallery."""

    camera: int = Field(description="the camera that saw it")
    track_id: int | str = Field(description="the track's id (unique per camera)")
    first_seen: str | None = Field(None, description="its earliest item's time (UTC, ISO 8601), or null")
    last_seen: str | None = Field(None, description="its latest item's time (UTC, ISO 8601), or null")
    items: int = Field(description="crops of the track in the gallery")
    first_id: int = Field(description="the track's first gallery id (its thumbnail)")


class TracksResponse(BaseModel):
    """Answer to ``GET /gallery/tracks``."""

    tracks: list[TrackSpan] = Field(description="tracks, earliest first (tracks without a time last)")
    total: int = Field(description="tracks in the gallery under the camera filter (may exceed `limit`)")


def _when(seconds: float | None) -> str | None:
    return None if seconds is None else iso(seconds)


@router.get("/tracks", response_model=TracksResponse, summary="The gallery's tracks on a time line",
            dependencies=[ApiKeyDep], responses=error_responses(401, 403, 422, 503))
async def tracks(runtime: RuntimeDep, request: Request,
                 camera: Annotated[list[int] | None, Query(description="only these cameras (repeatable)")] = None,
                 limit: Annotated[int, Query(ge=1, le=MAX_TRACKS, description="most tracks returned")] = 500,
                 ) -> TracksResponse:
    """Every ``(camera, track_id)`` of the gallery with its first and last time and item count, earliest first."""
    camera = check_cameras(runtime, camera)  # 422 for a camera the gallery does not have
    spans = await asyncio.to_thread(runtime.gallery.track_spans, camera)
    shown = spans[:limit]
    await auditor(request).record(request, params={"cameras": camera, "limit": limit},
                                  tracks=[[s["camera"], s["track_id"]] for s in shown])
    return TracksResponse(total=len(spans), tracks=[
        TrackSpan(camera=s["camera"], track_id=s["track_id"], first_seen=_when(s["first_seen"]),
                  last_seen=_when(s["last_seen"]), items=s["items"], first_id=s["first_id"]) for s in shown])
