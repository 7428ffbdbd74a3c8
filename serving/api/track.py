"""``POST /search/track``: several infrared crops of one person, searched as one query.

An operator rarely has a single crop: a night camera sees a person for seconds, a *track* of 10-50 crops.
The crops are checked and decoded as ``/search/batch`` checks them (:mod:`serving.api.uploads`), queued to
the model together (one micro-batch when the track fits ``max_batch_size``, consecutive ones otherwise),
fused into one descriptor (:func:`serving.runtime.ranking.fuse`) and searched once, with the same ``top_k``,
``camera``, ``group_by`` and ``rerank`` options as ``/search``.

A track must be one person: the server cannot check that, and a mixed track fuses into a descriptor of
nobody. Bad tracks get a 4xx naming the problem: no crops (422 ``empty_track``), more than
``max_track_crops`` (422 ``too_many_crops``), or a crop that is not a usable image (400, the message names
the crop by its position and file name, even when the other crops decode).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Query, Request, UploadFile

from serving.api.audit import auditor
from serving.api.deps import ApiKeyDep, RuntimeDep
from serving.api.errors import ApiError
from serving.api.schemas import SearchHit, Timings, TrackInfo, TrackSearchResponse, error_responses
from serving.api.search import (
    DEFAULT_TOP_K,
    Cameras,
    GroupBy,
    Rerank,
    RerankN,
    TopK,
    audit_params,
    check_options,
    ranked_answers,
    reread,
)
from serving.api.uploads import decode_uploads
from serving.runtime import ranking

router = APIRouter(tags=["search"])

Fusion = Annotated[Literal["mean", "max"], Query(
    description="how the crops' descriptors become one: `mean` of the L2-normalised descriptors, re-normalised "
                "(the standard), or their element-wise `max`, re-normalised")]


@router.post("/search/track", response_model=TrackSearchResponse, summary="Search the gallery with a track of crops",
             dependencies=[ApiKeyDep],
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503))
async def search_track(runtime: RuntimeDep, request: Request,
                       images: Annotated[list[UploadFile] | None, File(
                           description="the track's crops, all of one person (repeat the `images` field), "
                                       "1..max_track_crops (50 by default)")] = None,
                       top_k: TopK = DEFAULT_TOP_K, camera: Cameras = None, group_by: GroupBy = "none",
                       rerank: Rerank = False, rerank_n: RerankN = ranking.DEFAULT_RERANK_N,
                       fusion: Fusion = "mean") -> TrackSearchResponse:
    """Embed every crop, fuse the descriptors into one, and rank the gallery for it (module docstring)."""
    started = time.perf_counter()
    limit = runtime.settings.max_track_crops
    if not images:
        raise ApiError(422, "empty_track", "a track query needs at least one crop: send each crop as an `images` "
                                           f"file field (1 to {limit})")
    if len(images) > limit:
        raise ApiError(422, "too_many_crops", f"{len(images)} crops sent; a track query takes at most {limit} "
                                              f"(the server's max_track_crops)")
    options = check_options(runtime, top_k, camera, group_by, rerank, rerank_n)
    decoded = await decode_uploads(runtime, images)
    (result,), timings = await ranked_answers(runtime, decoded, options, started, fusion=fusion)
    if auditor(request).enabled:
        await auditor(request).record(request, images=await reread(images), params=audit_params(options, fusion=fusion),
                                      results=[result.hits])
    return TrackSearchResponse(results=[SearchHit(**h) for h in result.hits], timings_ms=Timings(**timings),
                               model=runtime.model_info(), groups=result.groups,
                               track=TrackInfo(crops=len(images), fusion=fusion))
