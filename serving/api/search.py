"""``POST /search`` and ``POST /search/batch``: infrared crops in, ranked RGB gallery matches out.

Whatever parsed a ``/search`` request (this route's multipart form, or :mod:`serving.api.raw_search` for a
raw image body), its answer is built by :func:`search_answer` and encoded by :func:`encode_answer`: the
hits are the runtime's ``SearchHit``-shaped dicts, written by orjson as they are, with ``response_model``
still documenting the body in OpenAPI (schemathesis checks answers against it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, File, Query, Request, Response, UploadFile
from pydantic import BaseModel

from serving.api.audit import auditor
from serving.api.deps import ApiKeyDep, RuntimeDep
from serving.api.errors import ApiError
from serving.api.schemas import BatchItem, BatchSearchResponse, SearchHit, SearchResponse, Timings, error_responses
from serving.api.uploads import RAW_IMAGE_TYPES, decode_uploads, raise_first_failure, read_uploads
from serving.runtime import ranking
from serving.runtime.state import Runtime

router = APIRouter(tags=["search"])

#: ``top_k`` when the request gives none (every way of asking ``/search`` uses it).
DEFAULT_TOP_K = 10
TopK = Annotated[int, Query(description="how many matches to return, 1..max_top_k (a server setting, 100 by "
                                        "default)")]
Cameras = Annotated[list[int] | None, Query(
    description="only return gallery items from these cameras; repeat the parameter for several "
                "(`?camera=1&camera=2`); an unknown camera is a 422 that lists the gallery's cameras")]


GroupBy = Annotated[Literal["none", "person", "camera_track"], Query(
    description="`none`: one result per crop. `person`: one result per person label (crops without a label are "
                "their own group); `camera_track`: one per (camera, track_id) (crops without a track id are their "
                "own group). Each group is shown by its best crop and scored by it; the search is widened until "
                "it holds top_k groups (see `groups`)")]
Rerank = Annotated[bool, Query(description="re-rank the top-`rerank_n` neighbourhood with k-reciprocal encoding "
                                           "(Zhong et al., CVPR 2017); needs an exact index (flat, flat_fp16): "
                                           "422 otherwise. The time it took is `timings_ms.rerank`")]
RerankN = Annotated[int, Query(description=f"neighbourhood re-ranked with rerank=true: top_k..{ranking.MAX_RERANK_N}; "
                                           "only those items can be in the answer")]


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
    return check_cameras(runtime, camera)


def check_cameras(runtime: Runtime, camera: list[int] | None) -> list[int] | None:
    """The camera filter, sorted and without repeats (None for all cameras).

    Raises:
        ApiError: 422 ``unknown_camera`` naming the cameras the gallery does not have.
    """
    if not camera:
        return None
    known = runtime.cameras
    unknown = sorted(set(camera) - set(known))
    if unknown:
        raise ApiError(422, "unknown_camera", f"camera(s) {', '.join(map(str, unknown))} not in the gallery; "
                                              f"its cameras are {', '.join(map(str, sorted(known))) or 'none'}")
    return sorted(set(camera))


def check_options(runtime: Runtime, top_k: int, camera: list[int] | None, group_by: str = "none",
                  rerank: bool = False, rerank_n: int = ranking.DEFAULT_RERANK_N) -> ranking.QueryOptions:
    """Everything :func:`check_query` checks, plus re-ranking's bounds and index kind.

    Raises:
        ApiError: 422 for ``rerank_n`` outside ``top_k..MAX_RERANK_N``, ``rerank`` on an approximate index,
            ``group_by`` on a gallery that cannot group (Milvus), and whatever :func:`check_query` raises.
    """
    cameras = check_query(runtime, top_k, camera)
    if group_by != "none" and not hasattr(runtime.gallery, "group_totals"):
        raise ApiError(422, "group_by_unsupported", f"group_by={group_by} needs a FAISS gallery (its metadata "
                                                    f"table counts the groups); this gallery is stored in Milvus")
    if rerank:
        if not top_k <= rerank_n <= ranking.MAX_RERANK_N:
            raise ApiError(422, "invalid_rerank_n", f"rerank_n must be between top_k ({top_k}) and "
                                                    f"{ranking.MAX_RERANK_N}, got {rerank_n}")
        why = ranking.check_rerank(runtime.gallery)
        if why is not None:
            raise ApiError(422, "rerank_needs_exact_index", why)
    return ranking.QueryOptions(top_k=top_k, cameras=None if cameras is None else tuple(cameras),
                                group_by=group_by, rerank=rerank, rerank_n=rerank_n)


async def ranked_answers(runtime: Runtime, decoded: list[Any], options: ranking.QueryOptions, started: float,
                         fusion: str | None = None) -> tuple[list[ranking.QueryAnswer], dict[str, float | None]]:
    """Embed decoded crops (one request: queued together, so they share micro-batches), fuse them into one
    query when ``fusion`` is given (a track), rank with ``options``; return the answers and ``timings_ms``."""
    decoded_at = time.perf_counter()
    vectors = await runtime.batcher.submit_many(decoded)
    embedded_at = time.perf_counter()
    fuse_s = None
    if fusion is not None:
        vectors = ranking.fuse(vectors, fusion)[None]
        fuse_s = time.perf_counter() - embedded_at
    answers = await asyncio.to_thread(ranking.answer, runtime.durable, vectors, options)
    done = time.perf_counter()
    rerank_s = sum(a.rerank_s or 0.0 for a in answers) if options.rerank else None
    timings = {"decode": _ms(decoded_at - started), "embed": _ms(embedded_at - decoded_at),
               "search": _ms(done - embedded_at - (rerank_s or 0.0) - (fuse_s or 0.0)),
               "total": _ms(done - started), "rerank": None if rerank_s is None else _ms(rerank_s),
               "fuse": None if fuse_s is None else _ms(fuse_s)}
    return answers, timings


async def reread(uploads: list[UploadFile]) -> list[bytes]:
    """The bytes of uploads already decoded (for their audit hashes): each spooled file read again."""
    datas = []
    for upload in uploads:
        await upload.seek(0)
        datas.append(await upload.read())
    return datas


def _ms(seconds: float) -> float:
    return round(1000.0 * seconds, 3)


def encode_answer(body: dict[str, Any], model: type[BaseModel]) -> bytes:
    """The JSON of a search answer: the one encoder of ``/search``'s bodies.

    The runtime's hits are already ``SearchHit``-shaped dicts of JSON types (:func:`serving.runtime.hits.hit_dict`;
    scores are checked finite by ``index.validate.check_scores``), so orjson writes ``body`` as it is, without a
    model per hit. A value orjson does not write (e.g. a numpy scalar from another metadata store) sends the whole
    body through ``model`` instead, which converts it as the schema says; keys the body left out stay out.
    """
    try:
        return orjson.dumps(body)
    except TypeError:
        return orjson.dumps(model.model_validate(body).model_dump(mode="json", exclude_unset=True))


_RAW_BODY = {"schema": {"type": "string", "format": "binary"}}
# The raw-body form is answered by serving.api.raw_search before this route; documented here so clients see it.
_RAW_IMAGE_BODY = {"requestBody": {"content": dict.fromkeys(RAW_IMAGE_TYPES, _RAW_BODY)}}


@router.post("/search", response_model=SearchResponse, summary="Search the gallery with one image",
             dependencies=[ApiKeyDep],
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503), openapi_extra=_RAW_IMAGE_BODY)
async def search(runtime: RuntimeDep, request: Request,
                 image: Annotated[UploadFile, File(description="the query crop (infrared or RGB): JPEG, PNG or "
                                                               "BMP, 1, 3 or 4 channels, 8 or 16 bits")],
                 top_k: TopK = DEFAULT_TOP_K, camera: Cameras = None, group_by: GroupBy = "none",
                 rerank: Rerank = False, rerank_n: RerankN = ranking.DEFAULT_RERANK_N) -> Response:
    """Embed the crop (micro-batched with concurrent requests) and rank the gallery by cosine similarity;
    optionally grouped (`group_by`) and re-ranked (`rerank`).

    The crop comes as the `image` part of a multipart form, or as the whole request body with an image
    `Content-Type` (`curl --data-binary @crop.jpg -H 'Content-Type: image/jpeg'`; plain `top_k`/`camera` only).
    """
    started = time.perf_counter()
    options = check_options(runtime, top_k, camera, group_by, rerank, rerank_n)
    (data,) = await read_uploads(runtime, [image])
    return Response(await search_answer(runtime, data, options, started, request), media_type="application/json")


def audit_params(options: ranking.QueryOptions, **extra: Any) -> dict[str, Any]:
    """A search's parameters as the audit trail records them."""
    return {"top_k": options.top_k, "cameras": None if options.cameras is None else list(options.cameras),
            "group_by": options.group_by, "rerank": options.rerank, **extra}


async def search_answer(runtime: Runtime, data: bytes, options: ranking.QueryOptions, started: float,
                        request: Request) -> bytes:
    """The ``SearchResponse`` JSON of ``POST /search`` for one checked upload, however the request came.

    A plain search (no grouping, no re-ranking) is decoded, embedded and searched in the model thread with
    its micro-batch (one hand-off); the others embed with the micro-batch and rank in a worker thread
    (:func:`serving.runtime.ranking.answer`), and their body also carries ``groups`` and every timing.

    Args:
        runtime: the server runtime.
        data: the uploaded file (type and size already checked).
        options: the checked request (:func:`check_options`).
        started: ``time.perf_counter()`` when the request began (``timings_ms.total`` counts from it).
        request: the request, for its audit record (written before the answer is returned).

    Raises:
        ImageDecodeError, BatcherOverloaded, BatcherClosed, GalleryDamaged: for the app's exception handlers.
    """
    if options.group_by != "none" or options.rerank:
        decoded = [await runtime.decode(data)]
        (result,), timings = await ranked_answers(runtime, decoded, options, started)
        body = {"results": result.hits, "timings_ms": timings, "model": runtime.model_info(),
                "groups": result.groups}
        await auditor(request).record(request, images=[data], params=audit_params(options),
                                      results=[result.hits])
        return encode_answer(body, SearchResponse)
    read_at = time.perf_counter()
    cameras = None if options.cameras is None else list(options.cameras)
    job = await runtime.search_image(data, options.top_k, cameras)
    done = time.perf_counter()
    # The three stages partition `total`: the search stage runs until the answer is back on the event loop,
    # which includes the hand-back from the model thread.
    decode = (read_at - started) + job.decode_s
    embed = job.embedded_at - read_at - job.decode_s
    search_s = done - job.embedded_at
    runtime.metrics.observe_stages(decode=decode, embed=embed, search=search_s)
    timings = {"decode": _ms(decode), "embed": _ms(embed), "search": _ms(search_s), "total": _ms(done - started)}
    await auditor(request).record(request, images=[data], params=audit_params(options), results=[job.result])
    return encode_answer({"results": job.result, "timings_ms": timings, "model": runtime.model_info()},
                         SearchResponse)


@router.post("/search/batch", response_model=BatchSearchResponse, summary="Search the gallery with several images",
             dependencies=[ApiKeyDep],
             responses=error_responses(400, 401, 403, 409, 413, 415, 422, 503))
async def search_batch(runtime: RuntimeDep, request: Request,
                       images: Annotated[list[UploadFile], File(description="query crops (repeat the `images` "
                                                                            "field), at most max_images_per_request")],
                       top_k: TopK = DEFAULT_TOP_K, camera: Cameras = None, group_by: GroupBy = "none",
                       rerank: Rerank = False, rerank_n: RerankN = ranking.DEFAULT_RERANK_N) -> BatchSearchResponse:
    """Like ``POST /search`` for each image, in one request; results come back in upload order. (Several crops
    of *one* person searched as one query: ``POST /search/track``.)"""
    started = time.perf_counter()
    limit = runtime.settings.max_images_per_request
    if len(images) > limit:
        raise ApiError(422, "too_many_images", f"{len(images)} images sent; at most {limit} per request")
    options = check_options(runtime, top_k, camera, group_by, rerank, rerank_n)
    cameras = None if options.cameras is None else list(options.cameras)
    if group_by != "none" or rerank:
        decoded = await decode_uploads(runtime, images)
        answers, timings = await ranked_answers(runtime, decoded, options, started)
        if auditor(request).enabled:
            await auditor(request).record(request, images=await reread(images), params=audit_params(options),
                                          results=[a.hits for a in answers])
        return BatchSearchResponse(
            items=[BatchItem(index=i, filename=upload.filename, results=[SearchHit(**h) for h in a.hits],
                             groups=a.groups) for i, (upload, a) in enumerate(zip(images, answers))],
            timings_ms=Timings(**timings), model=runtime.model_info())
    # Like POST /search: each crop is decoded, embedded and searched in the model thread with its micro-batch
    # (one hand-off per batch, not a decode-pool hop per image plus a search hop per request).
    datas = await read_uploads(runtime, images)
    read_at = time.perf_counter()
    jobs = await runtime.search_images(datas, top_k, cameras)
    done = time.perf_counter()
    raise_first_failure(images, jobs)
    # The stages partition `total` as /search's do, taking the slowest crop's decoding and the last embedding.
    decode_s = max(job.decode_s for job in jobs)
    embedded_at = max(job.embedded_at for job in jobs)
    await auditor(request).record(request, images=datas, params=audit_params(options),
                                  results=[job.result for job in jobs])
    return BatchSearchResponse(
        items=[BatchItem(index=i, filename=upload.filename, results=[SearchHit(**h) for h in job.result])
               for i, (upload, job) in enumerate(zip(images, jobs))],
        timings_ms=Timings(decode=_ms(read_at - started + decode_s), embed=_ms(embedded_at - read_at - decode_s),
                           search=_ms(done - embedded_at), total=_ms(done - started)),
        model=runtime.model_info())
