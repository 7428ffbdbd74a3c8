"""``POST /search`` and ``POST /search/batch``: infrared crops in, ranked RGB gallery matches out."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from serving.api.uploads import decode_uploads
from serving.core.errors import ApiError
from serving.deps import RuntimeDep
from serving.schemas import BatchItem, BatchSearchResponse, SearchHit, SearchResponse, Timings, error_responses
from serving.state import Runtime

router = APIRouter(tags=["search"])

TopK = Annotated[int, Query(description="how many matches to return, 1..max_top_k (a server setting, 100 by "
                                        "default)")]
Cameras = Annotated[list[int] | None, Query(
    description="only return gallery items from these cameras; repeat the parameter for several "
                "(`?camera=1&camera=2`); an unknown camera is a 422 that lists the gallery's cameras")]


def check_query(runtime: Runtime, top_k: int, camera: list[int] | None) -> list[int] | None:
    """Validate ``top_k`` and the camera filter against the settings and the gallery.

    Returns:
        The camera filter to pass to the gallery (None for all cameras).

    Raises:
        ApiError: 422 for a bad ``top_k`` or an unknown camera, 409 for an empty gallery.
    """
    max_top_k = runtime.settings.max_top_k
    if not 1 <= top_k <= max_top_k:
        raise ApiError(422, "invalid_top_k", f"top_k must be between 1 and {max_top_k}, got {top_k}")
    if runtime.size == 0:
        raise ApiError(409, "empty_gallery", "the gallery is empty; add items with POST /gallery or "
                                             "`python -m serving index` before searching")
    if not camera:
        return None
    known = runtime.cameras
    unknown = sorted(set(camera) - set(known))
    if unknown:
        raise ApiError(422, "unknown_camera", f"camera(s) {', '.join(map(str, unknown))} not in the gallery; "
                                              f"its cameras are {', '.join(map(str, sorted(known))) or 'none'}")
    return sorted(set(camera))


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 3)


@router.post("/search", response_model=SearchResponse, summary="Search the gallery with one image",
             responses=error_responses(400, 409, 413, 415, 422, 503))
async def search(runtime: RuntimeDep,
                 image: Annotated[UploadFile, File(description="the query crop (infrared or RGB): JPEG, PNG or "
                                                               "BMP, 1, 3 or 4 channels, 8 or 16 bits")],
                 top_k: TopK = 10, camera: Cameras = None) -> SearchResponse:
    """Embed the crop (micro-batched with concurrent requests) and rank the gallery by cosine similarity."""
    started = time.perf_counter()
    cameras = check_query(runtime, top_k, camera)
    (decoded,) = await decode_uploads(runtime, [image])
    decoded_at = time.perf_counter()
    vector = await runtime.batcher.submit(decoded)
    embedded_at = time.perf_counter()
    (hits,) = await runtime.search(vector[None, :], top_k, cameras)
    done = time.perf_counter()
    runtime.metrics.observe_stages(decode=decoded_at - started, embed=embedded_at - decoded_at,
                                   search=done - embedded_at)
    return SearchResponse(
        results=[SearchHit(**hit) for hit in hits],
        timings_ms=Timings(decode=_ms(decoded_at - started), embed=_ms(embedded_at - decoded_at),
                           search=_ms(done - embedded_at), total=_ms(done - started)),
        model=runtime.model_info())


@router.post("/search/batch", response_model=BatchSearchResponse, summary="Search the gallery with several images",
             responses=error_responses(400, 409, 413, 415, 422, 503))
async def search_batch(runtime: RuntimeDep,
                       images: Annotated[list[UploadFile], File(description="query crops (repeat the `images` "
                                                                            "field), at most max_images_per_request")],
                       top_k: TopK = 10, camera: Cameras = None) -> BatchSearchResponse:
    """Like ``POST /search`` for each image, in one request; results come back in upload order."""
    started = time.perf_counter()
    limit = runtime.settings.max_images_per_request
    if len(images) > limit:
        raise ApiError(422, "too_many_images", f"{len(images)} images sent; at most {limit} per request")
    cameras = check_query(runtime, top_k, camera)
    decoded = await decode_uploads(runtime, images)
    decoded_at = time.perf_counter()
    vectors = await runtime.batcher.submit_many(decoded)
    embedded_at = time.perf_counter()
    per_image = await runtime.search(vectors, top_k, cameras)
    done = time.perf_counter()
    return BatchSearchResponse(
        items=[BatchItem(index=i, filename=upload.filename, results=[SearchHit(**h) for h in hits])
               for i, (upload, hits) in enumerate(zip(images, per_image))],
        timings_ms=Timings(decode=_ms(decoded_at - started), embed=_ms(embedded_at - decoded_at),
                           search=_ms(done - embedded_at), total=_ms(done - started)),
        model=runtime.model_info())
